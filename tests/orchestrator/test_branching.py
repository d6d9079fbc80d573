"""Branching rollouts (group size K): the tree the Monte Carlo baselines need."""

from __future__ import annotations

import pytest

from collm_serve.orchestrator import TreeTooLargeError, check_tree, collect, tree_turns
from collm_serve.traces import TraceStore


def test_tree_size():
    assert tree_turns(1, 4) == 4
    assert tree_turns(2, 2) == 2 + 4
    assert tree_turns(4, 4) == 4 + 16 + 64 + 256
    check_tree(4, 4)  # 340 turns: allowed by default
    with pytest.raises(TreeTooLargeError, match="4680 turns"):
        check_tree(8, 4)


async def test_group_size_2_on_two_turns_builds_the_tree(team_for):
    team = team_for("coding", group_size=2)
    summary = await collect(team, 1, "train")
    assert summary.ok == 1, summary.failures
    with TraceStore(team.traces, create=False) as store:
        ep = store.get_episode(summary.episode_ids[0])
    assert ep.group_size == 2 and len(ep.turns) == tree_turns(2, 2)
    roots = ep.children(None)
    assert [t.branch_index for t in roots] == [0, 1]
    assert all(t.turn_index == 0 and not t.done for t in roots)
    leaf_returns = []
    for root in roots:
        kids = ep.children(root.turn_id)
        assert [(k.turn_index, k.branch_index, k.parent_turn_id, k.done) for k in kids] == [
            (1, 0, root.turn_id, True), (1, 1, root.turn_id, True)]
        assert all(not ep.children(k.turn_id) for k in kids)
        leaf_returns += [root.reward + k.reward for k in kids]
        for agent in ep.agents:
            # siblings were sampled together (n=2) from the same node: same prompt, own choices
            a0, a1 = (k.action(agent) for k in kids)
            assert a0.prompt_token_ids == a1.prompt_token_ids and a0.observation == a1.observation
            assert a0.response_token_ids != a1.response_token_ids
            assert a0.sampling.n == 2 and a0.sampling == a1.sampling
            # each branch continues from its own joint action: the agent's own parent response
            assert a0.observation[-2] == {"role": "assistant", "content": root.action(agent).response_text}
    r0, r1 = roots[0].action("helper"), roots[1].action("helper")
    assert r0.prompt_token_ids == r1.prompt_token_ids and r0.response_text != r1.response_text
    assert ep.final_return == pytest.approx(sum(leaf_returns) / 4)


async def test_oversized_tree_is_refused_before_anything_runs(team_for):
    team = team_for("build", group_size=8)  # 8 + 64 + 512 + 4096 turns
    with pytest.raises(TreeTooLargeError):
        await collect(team, 1, "train")
    assert not team_traces_exist(team)


def team_traces_exist(team) -> bool:
    from pathlib import Path

    return Path(team.traces).exists()
