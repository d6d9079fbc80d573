"""One end-to-end run with a vLLM-backed agent (the shared session `vllm_agent` of
tests/conftest.py: vLLM CPU serving SmolLM2-135M) next to a transformers one: a mixed team,
branching with the engine's `n`.

vLLM takes ~50-80 s to start on a small CPU machine, more than the rest of this suite's budget,
so the test runs when the session starts that agent anyway (other vLLM tests are collected too, as
in a full `pytest` run: then it costs one episode) or when COLLM_TEST_VLLM=1.
"""

from __future__ import annotations

import os

import pytest

from collm_serve.orchestrator import collect, tree_turns
from collm_serve.traces import TraceStore
from tests.orchestrator.conftest import make_team

pytestmark = pytest.mark.slow


def _vllm_paid_for(session) -> bool:
    if os.environ.get("COLLM_TEST_VLLM") == "1":
        return True
    return any("vllm" in item.nodeid for item in session.items if "tests/orchestrator/" not in item.nodeid)


async def test_mixed_team_with_vllm_branches(request, agents, tokenizer, tmp_path):
    if not _vllm_paid_for(request.session):
        pytest.skip("vLLM start-up (~1 min) is shared with tests/serve; run the whole suite or set COLLM_TEST_VLLM=1")
    vllm_agent = request.getfixturevalue("vllm_agent")
    team = make_team("coding", [vllm_agent.address, agents[1].address], tmp_path / "t.db", group_size=2)
    summary = await collect(team, 1, "train")
    assert summary.ok == 1, summary.failures
    with TraceStore(team.traces, create=False) as store:
        ep = store.get_episode(summary.episode_ids[0])
    assert len(ep.turns) == tree_turns(2, 2)
    for root in ep.children(None):
        assert len(ep.children(root.turn_id)) == 2
    for turn in ep.turns:
        a = turn.action("helper")
        assert tokenizer.decode(a.response_token_ids, skip_special_tokens=True) == a.response_text
        assert len(a.logprobs) == len(a.response_token_ids) > 0
    r0, r1 = (t.action("helper") for t in ep.children(None))
    assert r0.response_token_ids != r1.response_token_ids  # n=2 with one seed: two samples
