"""End to end: two real agent services + the collector, every task, into SQLite."""

from __future__ import annotations

import json
import math

import pytest

from collm_serve.orchestrator import collect, plan_episodes
from collm_serve.orchestrator.teams import build_task
from collm_serve.traces import TraceStore
from tests.orchestrator.conftest import MAX_TOKENS
from tests.traces.helpers import f32

EPISODES = 2


def _assert_episode_well_formed(ep, num_turns: int, tokenizer) -> None:
    assert ep.status == "ok", ep.failure_reason
    assert len(ep.turns) == num_turns
    parent = None
    for t, turn in enumerate(ep.turns):  # a chain: each turn's parent is the previous turn
        assert (turn.turn_index, turn.parent_turn_id, turn.branch_index) == (t, parent, 0)
        parent = turn.turn_id
        assert turn.done == (t == num_turns - 1)
        assert [a.agent for a in turn.actions] == ep.agents
        for a in turn.actions:
            assert a.response_token_ids, "an action without tokens"
            assert tokenizer.decode(a.response_token_ids, skip_special_tokens=True) == a.response_text
            assert len(a.logprobs) == len(a.response_token_ids)
            assert all(math.isfinite(x) and x <= 1e-6 for x in a.logprobs)
            assert a.prompt_token_ids and a.observation
            assert a.finish_reason in ("stop", "length")
            # the sampling the service echoed: the team's request (conftest), float32 on the wire
            assert (a.sampling.n, a.sampling.max_tokens, a.sampling.top_k) == (1, MAX_TOKENS, 0)
            assert a.sampling.temperature == f32(0.7) and a.sampling.top_p == f32(0.9)
            assert a.sampling.seed is not None
            assert a.latency_ms > 0
    assert ep.final_return == pytest.approx(sum(t.reward for t in ep.turns))


def _assert_isolated(ep) -> None:
    """No agent ever sees another agent's response text; each sees its own past responses."""
    for turn in ep.turns:
        for a in turn.actions:
            seen = json.dumps(a.observation)
            for other in ep.turns:
                for b in other.actions:
                    text = b.response_text.strip()
                    if b.agent != a.agent and len(text) >= 8:
                        assert json.dumps(text)[1:-1] not in seen, (a.agent, b.agent, text)
            if turn.turn_index > 0:
                own = ep.turns[turn.turn_index - 1].action(a.agent).response_text
                assert {"role": "assistant", "content": own} in a.observation


@pytest.mark.parametrize("task", ["toy", "writing", "coding", "build"])
async def test_collect_each_task(task, team_for, tokenizer, tmp_path):
    team = team_for(task)
    summary = await collect(team, EPISODES, "train", concurrency=2)
    assert (summary.ok, summary.failed, summary.skipped) == (EPISODES, 0, 0), summary.failures
    assert summary.mean_return == pytest.approx(sum(summary.returns) / EPISODES)
    num_turns = build_task(team).num_turns
    with TraceStore(team.traces, create=False) as store:
        assert store.integrity_check() == "ok"
        eps = {e.episode_id: e for e in store.iter_episodes(task=task)}
        assert set(eps) == set(summary.episode_ids)
        planned = plan_episodes(build_task(team), "train", EPISODES, team.seed)
        assert {e.problem_id for e in eps.values()} == {p.problem.problem_id for p in planned}
        for ep in eps.values():
            assert (ep.split, ep.group_size, ep.protocol) == ("train", 1, "parallel")
            _assert_episode_well_formed(ep, num_turns, tokenizer)
            if task in ("coding", "writing"):
                _assert_isolated(ep)
            if num_turns > 1:  # turn 0 ran on the base model: later turns pin it
                for turn in ep.turns[1:]:
                    assert all(a.adapter_version == 0 for a in turn.actions)


async def test_resume_skips_completed(team_for):
    team = team_for("toy")
    first = await collect(team, 2, "train")
    assert first.ok == 2
    again = await collect(team, 3, "train", resume=True)
    assert (again.skipped, again.ok, again.requested) == (2, 1, 3)
    with TraceStore(team.traces, create=False) as store:
        keys = store.completed_keys("toy", "train")
        assert keys == {(p.key) for p in plan_episodes(build_task(team), "train", 3, team.seed)}
        assert store.stats()["episodes"]["ok"] == 3
