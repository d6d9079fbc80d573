"""`writing` (TLDR) and `writing_arxiv`: the paper's rewards on hand-computed cases.

Expected values are computed by hand from OpenMLRL/LLM_Collab_Writing @7e59995
rewards/tldr_rewards.py (`tldr_combined_reward`: tokens 8-256 :220-221, char ratio :264-290,
unique ratio :317-342, transitions in text 2 :361-385, Jaccard cap 0.03 :388-403) and
rewards/arxiv_rewards.py (`arxiv_combined_reward`: tokens 128-256 :221-222, ratio :265-289,
unique ratio :316-354, transitions in text1+text2 :375-399, Jaccard cap 0.23 :406-421).
Test words like "q7"/"z12" contain no transition phrase and no stopword.
"""

from __future__ import annotations

import json

import pytest

from collm_serve.tasks import get_task
from collm_serve.tasks.writing import (
    ARXIV,
    MAX_REWARD,
    TLDR,
    jaccard,
    score_pair,
    transition_categories,
    transition_scale,
)


def toks(prefix: str, n: int, start: int = 0) -> str:
    return " ".join(f"{prefix}{i}" for i in range(start, start + n))


A10 = toks("q", 10)  # 10 tokens, 29 characters, 10 unique words
TLDR_CASES = {
    # name: (a, b, reward, level)
    "a_too_short": (toks("q", 5), toks("z", 20), 0.0, 0),
    "b_too_long": (A10, toks("z", 257), 0.0, 0),
    # 29 / 29 chars = 1.0 < 1.1: stop after +0.5
    "ratio_below_band": (A10, toks("z", 10), 0.5, 1),
    # 149 / 29 = 5.14 > 5.0: stop
    "ratio_above_band": (A10, toks("z", 40), 0.5, 1),
    # 59 / 29 = 2.03 -> 1.0; unique 10 / 10 = 1.0 < 1.3: stop
    "unique_below_band": (A10, toks("z", 10) + " " + toks("z", 10), 1.5, 2),
    # 41 / 29 = 1.4138 -> (1.4138 - 1.1) / 0.5 = 0.62759; unique 13 / 10 = 1.3 -> 0 but goes on;
    # no transition, disjoint words: style 0
    "ramps_at_their_ends": (A10, toks("z", 13), 0.5 + (41 / 29 - 1.1) / 0.5, 4),
    # 133 / 29 = 4.5862 -> 1 - (4.5862 - 3.2) / 1.8 = 0.22989; unique 3.6 -> 0.5
    "upper_ratio_ramp": (A10, toks("z", 36), 0.5 + 1 - (133 / 29 - 3.2) / 1.8 + 0.5, 4),
    # "also" is a stopword but matches "also" (elaboration) and "so" (cause_effect) as substrings:
    # 2 categories -> 0.4 * 0.45 = 0.18; 74 / 29 = 2.55 -> 1.0; unique 2.1 -> 0.5; Jaccard 0
    "substring_transitions": (A10, "also " + toks("z", 20), 0.5 + 1.0 + 0.5 + 0.18, 4),
    # "however": contrast + concession -> 0.18; Jaccard 1 / 30 = 0.033 >= cap 0.03 -> 0.6;
    # 85 / 29 = 2.93 -> 1.0; unique 21 / 10 -> 0.5
    "overlap_rewarded": (A10, "q0 however " + toks("z", 19), 0.5 + 1.0 + 0.5 + 0.18 + 0.6, 4),
}


@pytest.mark.parametrize("name", list(TLDR_CASES))
def test_tldr_reward(name):
    a, b, reward, level = TLDR_CASES[name]
    r, info = score_pair(a, b, TLDR)
    assert r == pytest.approx(reward) and info["level"] == level
    assert sum(info["reward_parts"].values()) == pytest.approx(r)
    json.dumps(info)


A130 = toks("q", 130)  # 130 tokens, 539 characters, 130 unique
A130_FEW = " ".join([toks("q", 10)] * 13)  # 130 tokens, 389 characters, 10 unique
ARXIV_CASES = {
    "a_too_short": (toks("q", 100), toks("z", 130), 0.0, 0),
    # 1139 / 539 = 2.11 > 2.0: stop
    "ratio_above_band": (A130, toks("z", 250), 0.5, 1),
    # 389 / 539 = 0.72 < 0.8: stop
    "ratio_below_band": (A130, " ".join([toks("z", 10)] * 13), 0.5, 1),
    # identical texts: ratio 1.0 -> (1.0 - 0.8) / 0.5 = 0.4; unique 1.0 -> 0.5;
    # no transition in a + b; Jaccard 1.0 >= cap 0.23 -> 0.6
    "identical": (A130, A130, 0.5 + 0.4 + 0.5 + 0.6, 4),
    # 547 / 539 -> (1.01484 - 0.8) / 0.5 = 0.42968; unique 131 / 130 -> 0.5; "however" in a + b
    # -> 0.18; Jaccard 0
    "lower_ramp_with_transition": (A130, "however " + toks("z", 130), 0.5 + (547 / 539 - 0.8) / 0.5 + 0.5 + 0.18, 4),
    # 449 / 389 -> (1.15424 - 0.8) / 0.5 = 0.70848; unique 15 / 10 = 1.5 -> 0.5 * (1 - 0.2 / 0.4) = 0.25
    "upper_unique_ramp": (A130_FEW, " ".join([toks("z", 15)] * 9), 0.5 + (449 / 389 - 0.8) / 0.5 + 0.25, 4),
    # 739 / 539 = 1.371 in [1.3, 1.6] -> 1.0; unique 170 / 130 = 1.3077 -> 0.5 * (1 - 0.0077 / 0.4)
    "optimal_ratio_upper_unique_ramp": (A130, toks("z", 170), 0.5 + 1.0 + 0.5 * (1 - (170 / 130 - 1.3) / 0.4), 4),
}


@pytest.mark.parametrize("name", list(ARXIV_CASES))
def test_arxiv_reward(name):
    a, b, reward, level = ARXIV_CASES[name]
    r, info = score_pair(a, b, ARXIV)
    assert r == pytest.approx(reward) and info["level"] == level
    assert sum(info["reward_parts"].values()) == pytest.approx(r)


def test_terms():
    assert MAX_REWARD == 3.0
    assert jaccard("the a of", "to and") == 1.0  # both empty after stopwords (tldr_rewards.py:167-168)
    assert jaccard("alpha beta", "beta gamma") == pytest.approx(1 / 3)
    assert transition_categories("q1 z2") == []
    assert transition_categories("However") == ["concession", "contrast"]
    assert transition_scale(0) == 0.0 and transition_scale(1) == 0.4
    assert transition_scale(3) == pytest.approx(0.5) and transition_scale(12) == pytest.approx(0.95)


def test_tasks_data_prompts_and_options():
    for name, n_train, n_eval in (("writing", 321, 80), ("writing_arxiv", 321, 80)):
        task = get_task(name)
        train, evl = task.problems("train"), task.problems("eval")
        assert (len(train), len(evl)) == (n_train, n_eval)
        assert not {p.problem_id for p in train} & {p.problem_id for p in evl}
        assert train[0].problem_id.startswith(f"{name}/pep-")
        assert (type(task).reward_shift, type(task).early_stop_threshold) == (0.0, None)
        assert task.num_turns == 1
    t = get_task("writing")
    ep = t.new_episode(t.problems("train")[0])
    a, b = ep.observation("writer_a")[0]["content"], ep.observation("writer_b")[0]["content"]
    assert a.startswith("Create a concise summary response to this post.\n\nQuery:\nTITLE: PEP ")
    assert b.endswith("- Use more unique words\n- Use some transition words to improve flow\n")
    t = get_task("writing_arxiv")
    ep = t.new_episode(t.problems("train")[0])
    a, b = ep.observation("writer_a")[0]["content"], ep.observation("writer_b")[0]["content"]
    assert "- You just need to focus on background and motivation\n" in a
    assert "- Avoid repeating methodology and implications content\n" in a
    assert "- There is another agent that will provide the background and motivation\n" in b
    assert "- Avoid repeating background and motivation content\n" in b


def test_episode_and_multi_turn_feedback():
    task = get_task("writing", num_turns=2)
    ep = task.new_episode(task.problems("eval")[0])
    r = ep.step({"writer_a": A10, "writer_b": "also " + toks("z", 20)})
    assert r.reward == pytest.approx(2.18) and not r.done
    assert "Revise your text" in r.feedback["writer_a"] and "z1" not in r.feedback["writer_a"]
    r = ep.step({"writer_a": A10, "writer_b": A10})
    assert r.done and r.reward == 0.5
