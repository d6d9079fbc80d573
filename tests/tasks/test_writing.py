from __future__ import annotations

import json

import pytest

from collm_serve.tasks import get_task
from collm_serve.tasks.writing import (
    DETAIL_WORDS,
    LENGTH_RATIO_BAND,
    MAX_JACCARD,
    MIN_TRANSITIONS,
    MIN_TYPE_TOKEN_RATIO,
    SUMMARY_WORDS,
    content_jaccard,
    score_pair,
    transitions_in,
    words,
)


def toks(prefix: str, n: int, start: int = 0) -> str:
    return " ".join(f"{prefix}{i}" for i in range(start, start + n))


S20 = toks("s", 20)
CASES = {
    # name: (summary, detail, reward, level)
    "summary_too_short": (toks("s", 10), toks("d", 60), 0.0, 0),
    "detail_too_long": (S20, toks("d", 301), 0.0, 0),
    "ratio_out_of_band": (S20, toks("d", 200), 1.0, 1),
    "repetitive_detail": (S20, " ".join([toks("d", 20)] * 3), 2.0, 2),
    "no_transitions_high_overlap": (S20, S20 + " " + toks("d", 40), 3.0, 3),
    "transitions_high_overlap": (S20, S20 + " " + toks("d", 38) + " however moreover", 3.5, 3),
    "low_overlap_one_transition": (S20, toks("d", 59) + " however", 3.5, 3),
    "all_levels": (S20, toks("d", 58) + " however moreover", 4.0, 4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_levels(name):
    summary, detail, reward, level = CASES[name]
    task = get_task("writing")
    ep = task.new_episode(task.problems("train")[0])
    r = ep.step({"writer_a": summary, "writer_b": detail})
    assert r.reward == reward
    assert r.info["level"] == level
    assert r.done
    json.dumps(r.info)


def test_thresholds_and_exact_metrics():
    assert SUMMARY_WORDS == (15, 80) and DETAIL_WORDS == (60, 300)
    assert LENGTH_RATIO_BAND == (1.5, 8.0) and MIN_TYPE_TOKEN_RATIO == 0.4
    assert MIN_TRANSITIONS == 2 and MAX_JACCARD == 0.25
    # inclusive bounds: 40 / 60 words, ratio exactly 1.5, jaccard exactly 0.25
    summary = toks("s", 40)
    detail = toks("s", 20) + " " + toks("d", 38) + " however moreover"  # 20 shared of 80 content words
    r, info = score_pair(summary, detail)
    assert info["ratio"] == 1.5 and info["jaccard"] == 0.25
    assert r == 4.0
    r, info = score_pair(toks("s", 15), toks("d", 80) + " thus hence")
    assert info["ratio"] == pytest.approx(82 / 15) and r == 4.0
    r, info = score_pair(S20, " ".join([toks("d", 24)] * 2) + " " + toks("e", 12))  # ttr 36/60
    assert info["type_token_ratio"]["detail"] == 0.6 and r == 3.5  # no transitions, low overlap
    assert words("It's a Test, of 3 words-ish!") == ["it's", "a", "test", "of", "3", "words", "ish"]
    assert transitions_in("First, we went. For example: however!") == ["first", "for example", "however"]
    assert transitions_in("forexample howeverish") == []
    assert content_jaccard(["the", "cat"], ["the", "dog"]) == 0.0  # stopwords ignored


def test_natural_pair_full_reward():
    summary = ("Honeybee foragers perform a waggle dance whose angle and duration tell nestmates the "
               "direction and distance of flowers.")
    detail = (
        "The dance works like a compact map. First, the straight run is oriented relative to gravity on "
        "the vertical comb, standing in for the sun's position outside. For example, a run pointing "
        "straight up means fly toward the sun, while a run tilted forty degrees to the right means the "
        "target lies forty degrees clockwise from it. Moreover, recruits do not merely watch: they press "
        "close, sensing vibrations with their antennae and sampling floral odour clinging to the dancer's "
        "body. However, the code must be updated as hours pass, so dancers gradually rotate their runs, "
        "revealing an internal clock. Consequently, researchers who shifted sugar stations could predict "
        "where newcomers would search."
    )
    r, info = score_pair(summary, detail)
    assert r == 4.0
    assert (info["summary_words"], info["detail_words"]) == (18, 111)
    assert info["transitions"] == ["consequently", "first", "for example", "however", "moreover"]


def test_feedback_and_observation_isolation():
    task = get_task("writing", num_turns=2)
    ep = task.new_episode(task.problems("eval")[0])
    a_text = S20 + " zebraquokka"
    b_text = toks("d", 58) + " however moreover platypusmarker"
    r = ep.step({"writer_a": a_text, "writer_b": b_text})
    assert not r.done
    fa, fb = r.feedback["writer_a"], r.feedback["writer_b"]
    assert "summary 21 words" in fa and "detailed text 61 words" in fa
    assert "Transition words in the detailed text: 2 (however, moreover" in fb
    assert "Revise your text" in fa
    obs_a = "\n".join(m["content"] for m in ep.observation("writer_a"))
    obs_b = "\n".join(m["content"] for m in ep.observation("writer_b"))
    assert "platypusmarker" not in obs_a and b_text not in obs_a
    assert "zebraquokka" not in obs_b and a_text not in obs_b
    assert a_text in obs_a and b_text in obs_b  # each keeps its own answer
    src = task.problems("eval")[0].payload["text"]
    assert src in ep.observation("writer_a")[0]["content"]
    assert "CONCISE summary" in ep.observation("writer_a")[0]["content"]
    assert "DETAILED complementary" in ep.observation("writer_b")[0]["content"]


def test_source_corpus():
    task = get_task("writing")
    problems = task.problems("train") + task.problems("eval")
    assert len(problems) == 16
    for p in problems:
        n = len(p.payload["text"].split())
        assert 120 <= n <= 200, (p.problem_id, n)
