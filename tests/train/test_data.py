"""Trace records -> per-(agent, turn) samples."""

from __future__ import annotations

import pytest

from collm_serve.traces.records import EPISODE_FAILED
from collm_train.data import build_batch, check_traces, cut_middle, joint_history_ids
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
    assert (m0.temperature, m0.top_k, m0.top_p) == (1.0, 0, 1.0)  # the fixture's logged values
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


def test_staleness_is_never_negative_for_a_fresh_learner():
    """A learner on the base model (version 0) reading actions served by v3 did not produce
    them: their staleness is the distance 3, not -3, and max_staleness bounds it (issue 16)."""
    ep = chain_episode(AGENTS, [1.0, 2.0])
    for turn in ep.turns:
        for a in turn.actions:
            a.adapter_version = 3
    ep.turns[1].actions[1].adapter_version = 0  # one action served by the base model
    batch = build_batch([ep], AGENTS, learner_version=0)
    assert [s.staleness for s in batch.samples] == [3, 3, 3, 0]
    assert min(s.staleness for v in range(6) for s in build_batch([ep], AGENTS, learner_version=v).samples) >= 0
    assert [s.trainable for s in build_batch([ep], AGENTS, learner_version=0, max_staleness=2).samples] == [
        False, False, False, True]
    assert [s.staleness for s in build_batch([ep], AGENTS, learner_version=5).samples] == [2, 2, 2, 5]


def test_missing_agent_is_an_error():
    with pytest.raises(ValueError, match="no agent"):
        build_batch([chain_episode(["helper"], [1.0])], AGENTS)


def test_action_without_sampling_is_refused_naming_the_episode():
    ep = chain_episode(AGENTS, [1.0, 2.0], episode_id="old-trace")
    ep.turns[1].actions[1].sampling = None  # e.g. a legacy row that did not record top_k
    with pytest.raises(ValueError, match=r"episode old-trace turn 1: the action of 'main' has no sampling record"):
        build_batch([ep], AGENTS)
    with pytest.raises(ValueError, match="no sampling record"):  # the early check (no torch) says it too
        check_traces("mareinforce", [ep], AGENTS)
    ep.turns[1].actions[1] = action("main", [1], [2, 3], min_tokens=2)
    with pytest.raises(ValueError, match="min_tokens=2"):
        build_batch([ep], AGENTS)


def test_broken_tree_links_are_an_error():
    ep = chain_episode(AGENTS, [1.0, 2.0])
    ep.turns[1].parent_turn_id = None  # a second root at turn 1: the chain would silently break
    with pytest.raises(ValueError, match="link each turn"):
        build_batch([ep], AGENTS)


def test_cut_middle_by_hand():
    ids = list(range(20))
    assert cut_middle(ids, 30, head=5, newest=4) == ids  # fits: untouched
    # budget 10, head 3, newest 4: head whole, tail = the last 7 (newest turn + 3 older)
    assert cut_middle(ids, 10, head=3, newest=4) == [0, 1, 2] + list(range(13, 20))
    # newest turn longer than half the budget: it keeps half, the head the rest
    assert cut_middle(ids, 10, head=8, newest=12) == [0, 1, 2, 3, 4] + list(range(15, 20))
    assert cut_middle(ids, 10) == list(range(10, 20))  # no structure given: a left cut
    assert cut_middle(ids, 0, head=3) == []


def _build_history(agents, turns=4):
    """A 4-turn build-game history per agent, as chat-formatted ids: the turn-0 prompt holds the
    system prompt and the task statement with the target (TARGET ids); each later prompt is the
    previous one + the agent's response + the feedback + a new generation header."""
    sys_ids, header = [1, 2, 3], [5, 6]
    prompts, responses = [], []
    for t in range(turns):
        row_p, row_r = {}, {}
        for i, a in enumerate(agents):
            task = [10 + i] * 8 + TARGET[a] + [11 + i] * 8  # 20 tokens, the target in the middle
            p = sys_ids + task + header if t == 0 else (
                prompts[t - 1][a] + responses[t - 1][a] + [7] + [300 + 10 * t + i] * 15 + header)
            row_p[a], row_r[a] = p, [200 + t] * 20
        prompts.append(row_p)
        responses.append(row_r)
    return prompts, responses


TARGET = {"helper": [77, 78, 79, 80], "main": [87, 88, 89, 90]}


def test_long_history_keeps_task_statement_and_newest_turn():
    prompts, responses = _build_history(AGENTS)
    last = prompts[3]["helper"]
    assert len(last) == 25 + 3 * 38  # 139 tokens, over the critic limit below
    newest = last[len(prompts[2]["helper"]):]  # the newest turn: turn 2's response, end, feedback, header
    assert len(newest) == 38
    assert TARGET["helper"][0] not in last[-80:]  # what the old left cut kept: no target
    ep = chain_episode(AGENTS, [0.0, 0.0, 0.0, 1.0], prompts, responses)
    batch = build_batch([ep], AGENTS, critic_max_len=80)
    h3 = [s for s in batch.samples if s.agent == "helper" and s.turn_index == 3][0]
    # DC (own history): task statement (25 = common prefix with the turn-0 prompt) + the last 55
    assert h3.own_ids == last[:25] + last[-55:] and h3.own_ids[-38:] == newest
    assert set(TARGET["helper"]) <= set(h3.own_ids)
    # CC (joint history, 2 x 139 > 160): each agent gets 80 and is cut the same way
    batch = build_batch([ep], AGENTS, critic_max_len=160)
    joint = [s for s in batch.samples if s.turn_index == 3][0].joint_ids
    main_last = prompts[3]["main"]
    assert joint == last[:25] + last[-55:] + main_last[:25] + main_last[-55:]
    assert set(TARGET["helper"]) <= set(joint) and set(TARGET["main"]) <= set(joint)
    # turn 0 prompts (25 tokens) fit: untouched
    assert batch.samples[0].own_ids == prompts[0]["helper"]
