"""`writing`: two complementary texts from one source (the paper's TLDR / arXiv-abstract
cooperative writing), 1 turn by default.

Data: `data/writing_sources.jsonl`, 16 original expository paragraphs (CC0, see data/README.md);
the first 12 in file order are "train", the last 4 "eval".

Agents: `writer_a` writes a concise summary, `writer_b` a longer, detailed complement. Both see
the source; neither ever sees the other's text (feedback reports only numbers: word counts, the
ratio, diversities, which transition words were found, the overlap).

Words are lowercase runs of letters/digits (with an inner apostrophe). Reward (joint, in
[0, 4], gated levels - a level is only scored when the previous one passed):
  1. lengths    +1.0: summary has SUMMARY_WORDS (15..80) words and the detailed text
                DETAIL_WORDS (60..300).
  2. ratio      +1.0: detail words / summary words within LENGTH_RATIO_BAND (1.5..8.0).
  3. diversity  +1.0: each text's type-token ratio (unique words / words) >= MIN_TYPE_TOKEN_RATIO
                (0.4).
  4. style      +0.5 when the detailed text uses >= MIN_TRANSITIONS (2) distinct phrases of
                TRANSITION_WORDS, and +0.5 when the Jaccard overlap of the two texts' content-word
                sets (STOPWORDS removed) is <= MAX_JACCARD (0.25). The two halves are independent.
`info` records every measured quantity and `info["level"]` (0..4, 4 = both style halves).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from collm_serve.tasks.base import Problem, Task, TaskEpisode, check_split

DATA_PATH = Path(__file__).parent / "data" / "writing_sources.jsonl"
NUM_TRAIN = 12

SUMMARY_WORDS = (15, 80)  # inclusive
DETAIL_WORDS = (60, 300)  # inclusive
LENGTH_RATIO_BAND = (1.5, 8.0)  # inclusive, detail / summary
MIN_TYPE_TOKEN_RATIO = 0.4
MIN_TRANSITIONS = 2
MAX_JACCARD = 0.25

LENGTH_REWARD = 1.0
RATIO_REWARD = 1.0
DIVERSITY_REWARD = 1.0
TRANSITION_REWARD = 0.5
OVERLAP_REWARD = 0.5
MAX_REWARD = LENGTH_REWARD + RATIO_REWARD + DIVERSITY_REWARD + TRANSITION_REWARD + OVERLAP_REWARD

TRANSITION_WORDS = (
    "additionally", "also", "as a result", "because", "besides", "consequently", "finally",
    "first", "for example", "for instance", "furthermore", "hence", "however", "in addition",
    "in contrast", "in particular", "instead", "meanwhile", "moreover", "nevertheless",
    "on the other hand", "second", "similarly", "specifically", "therefore", "thus",
    "although", "whereas",
)
STOPWORDS = frozenset(
    """a an the and or but if then than so of in on at to for from by with without into onto
    over under about as is are was were be been being it its it's this that these those there
    here they them their he she his her we our you your i me my not no do does did has have had
    can could will would may might must should which who whom whose what when where why how
    all any each more most some such only also very just up out""".split()
)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def type_token_ratio(ws: list[str]) -> float:
    return len(set(ws)) / len(ws) if ws else 0.0


def transitions_in(text: str) -> list[str]:
    low = " ".join(words(text))
    return sorted(t for t in TRANSITION_WORDS if re.search(rf"\b{re.escape(t)}\b", low))


def content_jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a) - STOPWORDS, set(b) - STOPWORDS
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


def score_pair(summary: str, detail: str) -> tuple[float, dict[str, Any]]:
    """Reward and level info of (summary, detailed complement)."""
    ws, wd = words(summary), words(detail)
    parts = {"lengths": 0.0, "ratio": 0.0, "diversity": 0.0, "transitions": 0.0, "overlap": 0.0}
    info: dict[str, Any] = {
        "level": 0,
        "max_reward": MAX_REWARD,
        "summary_words": len(ws),
        "detail_words": len(wd),
        "reward_parts": parts,
    }
    lengths_ok = (SUMMARY_WORDS[0] <= len(ws) <= SUMMARY_WORDS[1]) and (
        DETAIL_WORDS[0] <= len(wd) <= DETAIL_WORDS[1]
    )
    info["lengths_ok"] = lengths_ok
    if not lengths_ok:
        return 0.0, info
    parts["lengths"] = LENGTH_REWARD
    info["level"] = 1

    ratio = len(wd) / len(ws)
    info["ratio"] = ratio
    info["ratio_ok"] = LENGTH_RATIO_BAND[0] <= ratio <= LENGTH_RATIO_BAND[1]
    if not info["ratio_ok"]:
        return sum(parts.values()), info
    parts["ratio"] = RATIO_REWARD
    info["level"] = 2

    ttr = {"summary": type_token_ratio(ws), "detail": type_token_ratio(wd)}
    info["type_token_ratio"] = ttr
    info["diversity_ok"] = min(ttr.values()) >= MIN_TYPE_TOKEN_RATIO
    if not info["diversity_ok"]:
        return sum(parts.values()), info
    parts["diversity"] = DIVERSITY_REWARD
    info["level"] = 3

    found = transitions_in(detail)
    jac = content_jaccard(ws, wd)
    info["transitions"] = found
    info["transitions_ok"] = len(found) >= MIN_TRANSITIONS
    info["jaccard"] = jac
    info["overlap_ok"] = jac <= MAX_JACCARD
    if info["transitions_ok"]:
        parts["transitions"] = TRANSITION_REWARD
    if info["overlap_ok"]:
        parts["overlap"] = OVERLAP_REWARD
    if info["transitions_ok"] and info["overlap_ok"]:
        info["level"] = 4
    return sum(parts.values()), info


class WritingTask(Task):
    name = "writing"

    def __init__(self, num_turns: int = 1):
        if num_turns < 1:
            raise ValueError(f"num_turns must be >= 1, got {num_turns}")
        self.agents = ("writer_a", "writer_b")
        self.num_turns = num_turns
        with open(DATA_PATH, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        self._problems = {"train": [], "eval": []}
        for i, row in enumerate(rows):
            split = "train" if i < NUM_TRAIN else "eval"
            self._problems[split].append(
                Problem(f"writing/{row['id']}", split, {"title": row["title"], "text": row["text"]})
            )

    def problems(self, split: str) -> list[Problem]:
        return list(self._problems[check_split(split)])

    def new_episode(self, problem: Problem) -> WritingEpisode:
        return WritingEpisode(self, problem)


def _prompt(agent: str, payload: dict[str, Any]) -> str:
    source = f"Source text ({payload['title']}):\n\"\"\"\n{payload['text']}\n\"\"\"\n\n"
    if agent == "writer_a":
        return (
            "You are WRITER A in a two-writer team. Your partner writes a longer, detailed "
            "complement to your text; you do not see each other's writing.\n\n" + source +
            f"Write a CONCISE summary of the source in {SUMMARY_WORDS[0]}-{SUMMARY_WORDS[1]} words. "
            "Reply with the summary only."
        )
    return (
        "You are WRITER B in a two-writer team. Your partner writes a concise summary of the "
        "source; you do not see each other's writing.\n\n" + source +
        f"Write a DETAILED complementary text of {DETAIL_WORDS[0]}-{DETAIL_WORDS[1]} words, about "
        f"{LENGTH_RATIO_BAND[0]:g} to {LENGTH_RATIO_BAND[1]:g} times as long as a short summary, "
        "that adds details, examples and explanations. Use transition words (for example, however, "
        "moreover) and varied wording rather than the source's key phrases. Reply with the text only."
    )


def _feedback(agent: str, reward: float, info: dict[str, Any], last: bool) -> str:
    own = "summary" if agent == "writer_a" else "detail"
    lines = [f"Feedback on your team's texts (reward {reward:.2f} / {MAX_REWARD:.1f}):"]
    lines.append(
        f"- Lengths: summary {info['summary_words']} words (wanted {SUMMARY_WORDS[0]}-{SUMMARY_WORDS[1]}), "
        f"detailed text {info['detail_words']} words (wanted {DETAIL_WORDS[0]}-{DETAIL_WORDS[1]})."
    )
    if "ratio" in info:
        lines.append(f"- Length ratio detail/summary: {info['ratio']:.2f} (wanted "
                     f"{LENGTH_RATIO_BAND[0]:g}-{LENGTH_RATIO_BAND[1]:g}).")
    if "type_token_ratio" in info:
        lines.append(f"- Lexical diversity of your text: {info['type_token_ratio'][own]:.2f} "
                     f"(wanted >= {MIN_TYPE_TOKEN_RATIO:g} for both texts).")
    if "transitions" in info:
        lines.append(f"- Transition words in the detailed text: {len(info['transitions'])} "
                     f"({', '.join(info['transitions']) or 'none'}; wanted >= {MIN_TRANSITIONS}).")
        lines.append(f"- Word overlap between the texts (Jaccard): {info['jaccard']:.2f} "
                     f"(wanted <= {MAX_JACCARD:g}).")
    if not last:
        lines.append("\nRevise your text using this feedback. Reply with the text only.")
    return "\n".join(lines)


class WritingEpisode(TaskEpisode):
    def _initial_prompt(self, agent: str) -> str:
        return _prompt(agent, self.problem.payload)

    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        reward, info = score_pair(joint_action["writer_a"], joint_action["writer_b"])
        last = self.is_last_turn
        return reward, {a: _feedback(a, reward, info, last) for a in self.agents}, info
