"""Trace records -> per-(agent, turn) samples."""

from __future__ import annotations

import pytest

from collm_serve.traces.records import EPISODE_FAILED
from collm_train.data import build_batch, joint_history_ids
from tests.train.conftest import action, chain_episode

AGENTS = ["helper", "main"]


def test_sample_fields_and_joint_history():
    prompts = [{"helper": [1, 2, 3], "main": [4, 5]}, {"helper": [1, 2, 3, 9], "main": [4, 5, 8]}]
    responses = [{"helper": [10, 2], "main": [11]}, {"helper": [12], "main": [13, 2]}]
    ep = chain_episode(AGENTS, [0.5, 1.0], prompts, responses)
    ep.turns[0].actions[0] = action("helper", [1, 2, 3], [10, 2], [-0.5, -0.25], version=2,
                                    temperature=0.7, top_p=0.9, top_k=40)
    batch = build_batch([ep], AGENTS, learner_version=3)
    h0, m0, h1, m1 = batch.samples
    assert (h0.agent, h0.turn_index, h0.reward, h0.done) == ("helper", 0, 0.5, False)
    assert h0.prompt_ids == [1, 2, 3] and h0.response_ids == [10, 2]
    assert h0.logp_behaviour == pytest.approx(-0.75)
    assert (h0.temperature, h0.top_k, h0.top_p) == (0.7, 40, 0.9)
    assert (m0.temperature, m0.top_k, m0.top_p) == (1.0, 0, 1.0)  # defaults when not logged
    assert (h0.adapter_version, h0.staleness, m0.staleness) == (2, 1, 3)
    # joint history: the agents' served prompts concatenated in team order
    assert h0.joint_ids == m0.joint_ids == [1, 2, 3, 4, 5]
    assert h0.next_joint_ids == [1, 2, 3, 9, 4, 5, 8]
    assert h0.own_ids == [1, 2, 3] and h0.next_own_ids == [1, 2, 3, 9] and m0.next_own_ids == [4, 5, 8]
    assert h1.next_joint_ids is None and h1.done
    assert h0.children == [2] and m0.children == [3] and h1.children == []
    assert batch.episode_returns == [1.5]


def test_joint_history_truncation_keeps_every_agent():
    a, b, c = list(range(100, 110)), [1, 2], list(range(200, 220))
    assert joint_history_ids([a, b, c], None) == a + b + c
    assert joint_history_ids([a, b, c], 32) == a + b + c
    # budget 14: b (2) kept whole, a and c share 12 -> the LAST 6 tokens of each
    assert joint_history_ids([a, b, c], 14) == a[-6:] + b + c[-6:]
    # budget 15: the odd token goes to the later (more recent) agent
    assert joint_history_ids([a, b, c], 15) == a[-6:] + b + c[-7:]
    assert len(joint_history_ids([a, b, c], 3)) == 3


def test_chain_without_turn_ids_and_skipped_episodes():
    ep = chain_episode(AGENTS, [1.0, 2.0, 3.0])
    for t in ep.turns:
        t.turn_id = t.parent_turn_id = None
    failed = chain_episode(AGENTS, [1.0], episode_id="bad")
    failed.status = EPISODE_FAILED
    batch = build_batch([ep, failed], AGENTS)
    assert batch.n_episodes == 1 and batch.n_skipped == 1
    assert [s.children for s in batch.samples] == [[2], [3], [4], [5], [], []]


def test_max_staleness_keeps_links_but_marks_untrainable():
    ep = chain_episode(AGENTS, [1.0, 2.0])
    ep.turns[0].actions[0].adapter_version = 1
    batch = build_batch([ep], AGENTS, learner_version=5, max_staleness=2)
    assert [s.trainable for s in batch.samples] == [False, False, False, False]
    batch = build_batch([ep], AGENTS, learner_version=2, max_staleness=1)
    assert [s.trainable for s in batch.samples] == [True, False, False, False]
    assert batch.samples[0].children == [2]


def test_missing_agent_is_an_error():
    with pytest.raises(ValueError, match="no agent"):
        build_batch([chain_episode(["helper"], [1.0])], AGENTS)


def test_broken_tree_links_are_an_error():
    ep = chain_episode(AGENTS, [1.0, 2.0])
    ep.turns[1].parent_turn_id = None  # a second root at turn 1: the chain would silently break
    with pytest.raises(ValueError, match="link each turn"):
        build_batch([ep], AGENTS)
