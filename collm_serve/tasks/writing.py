"""`writing` (the paper's TLDR task) and `writing_arxiv` (abstract -> introduction), 1 turn.

Paper's code: OpenMLRL/LLM_Collab_Writing @7e59995: `rewards/tldr_rewards.py`
(`tldr_combined_reward`), `rewards/arxiv_rewards.py` (`arxiv_combined_reward`), the prompts in
`train_maac.py:27-106`, the configs `configs/maac_tldr_config.yaml` / `maac_arxiv_config.yaml`
(1 turn, line 42; reward shift 0.0, line 59; no early termination).

Data: `data/pep_abstracts.jsonl`, the Abstract sections of 401 Python Enhancement Proposals
(public domain / CC0-1.0, per each PEP's own Copyright section; see data/README.md), split by the
file's `split` field: 321 "train", 80 "eval". The paper uses Reddit TL;DR posts (trl-lib/tldr)
and arXiv abstracts (OpenMLRL/arXiv_abstract), neither shippable here under a clear licence.
A PEP abstract is both a post to summarise (`writing`) and an abstract to expand into an
introduction (`writing_arxiv`).

Agents: `writer_a` (the paper's agent 1: the concise summary / background and motivation) and
`writer_b` (agent 2: the detailed summary / methodology and implications). Neither sees the
other's text.

Reward (joint, `score_pair`, max 3.0), the paper's gated levels with every number as theirs
(tldr_rewards.py / arxiv_rewards.py line numbers, the same in both files unless given twice):
  L1 +0.5   both texts have min..max whitespace tokens (TLDR 8..256, arXiv 128..256),
            else stop                                            :204-239 / :204-240
  L2 +0..1  character-length ratio len(b)/len(a) in a band with linear ramps; outside, stop
            TLDR: 1 on [1.6, 3.2], ramps from 1.1 and to 5.0     :245-302
            arXiv: 1 on [1.3, 1.6], ramps from 0.8 and to 2.0    :246-301
  L3 +0..0.5 unique-word ratio uniq(b)/uniq(a) (all words `\\b\\w+\\b`, stopwords included:
            `count_unique_words` defaults to exclude_stopwords=False, :143-151); a==0 or
            outside the band: stop
            TLDR: 0.5 from 2.0 up, ramp from 1.3                :207-210, 314-354
            arXiv: 0.5 on [0.7, 1.3], ramps from 0.5 and to 1.7  :208-211, 313-368
  L4 +0..1  style = 0.4 x transition scale + 0.6 x min(jaccard, cap)/cap
            transition scale: 0 with no category, else 0.4 + min(0.05 x (categories-1), 0.6),
            at most 1.0; a phrase counts when it is a SUBSTRING of the lower-cased text
            (`word in text_lower`, :178-190) - so "so" also matches "also"; TLDR looks in text b
            (:361), arXiv in a + b concatenated (:375)              :374-385 / :388-399
            jaccard = |A∩B|/|A∪B| of the two texts' word sets without STOPWORDS (1.0 when both
            are empty), cap TLDR 0.03 (:388-392), arXiv 0.23 (:406-410): some overlap is
            REWARDED, up to the cap                                  :162-176, :400-405 / :418-423
`info` records every measured quantity, the parts and `info["level"]` (0..4: levels reached).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collm_serve.tasks.base import Problem, Task, TaskEpisode, check_split

DATA_PATH = Path(__file__).parent / "data" / "pep_abstracts.jsonl"
TRANSITION_WORDS_PATH = Path(__file__).parent / "data" / "transition_words.json"

# tldr_rewards.py:45-55 (the same set in arxiv_rewards.py:45-55)
STOPWORDS = frozenset("""
a all also an and any are as at bad be been being both but by can could did do does each few first
for from good great had has have he her here him his how i if in is it its just last left little
long low many may me might more most much must my new no not now of old on only or other our own
right same shall should so some such than that the their them then there these they this those to
too us very was we were what when where which who why will with would you your
""".split())

# tldr_rewards.py:56-134 (the same lists in arxiv_rewards.py:56-134): category -> phrases, as data
# (data/transition_words.json, values and order unchanged)
TRANSITION_WORDS: dict[str, tuple[str, ...]] = {
    c: tuple(p) for c, p in json.loads(TRANSITION_WORDS_PATH.read_text(encoding="utf-8")).items()}

LENGTH_REWARD = 0.5
RATIO_REWARD = 1.0
UNIQUE_REWARD = 0.5
TRANSITION_WEIGHT = 0.4
JACCARD_WEIGHT = 0.6
MAX_REWARD = LENGTH_REWARD + RATIO_REWARD + UNIQUE_REWARD + TRANSITION_WEIGHT + JACCARD_WEIGHT  # 3.0

_WORD = re.compile(r"\b\w+\b")


@dataclass(frozen=True)
class Band:
    """Score 1 on [full_lo, full_hi], linear ramps down to 0 at zero_lo and zero_hi, and
    "stop" outside [zero_lo, zero_hi] (the paper's level 2 and 3 shape)."""

    zero_lo: float
    full_lo: float
    full_hi: float
    zero_hi: float

    def score(self, x: float) -> float | None:
        """The band's score in [0, 1], or None outside it (the reward stops there). A point on a
        ramp's outer end scores 0 but goes on, as the paper's `<=` tests do."""
        if self.full_lo <= x <= self.full_hi:
            return 1.0
        if self.zero_lo <= x < self.full_lo:
            return (x - self.zero_lo) / (self.full_lo - self.zero_lo)
        if self.full_hi < x <= self.zero_hi:
            return 1.0 - (x - self.full_hi) / (self.zero_hi - self.full_hi)
        return None


@dataclass(frozen=True)
class WritingReward:
    """One variant of the paper's writing reward: every constant it uses."""

    name: str
    tokens: tuple[int, int]  # inclusive, each text
    length_ratio: Band  # characters of b / characters of a
    unique_ratio: Band  # unique words of b / unique words of a
    transitions_in_both: bool  # False: text b only (TLDR); True: a + b (arXiv)
    jaccard_cap: float


TLDR = WritingReward(  # tldr_rewards.py:220-221, 264-290, 320-342, 361, 391-392
    "tldr", (8, 256), Band(1.1, 1.6, 3.2, 5.0), Band(1.3, 2.0, math.inf, math.inf), False, 0.03)
ARXIV = WritingReward(  # arxiv_rewards.py:221-222, 265-289, 320-354, 375, 409-410
    "arxiv", (128, 256), Band(0.8, 1.3, 1.6, 2.0), Band(0.5, 0.7, 1.3, 1.7), True, 0.23)


def count_tokens(text: str) -> int:
    """Whitespace tokens (tldr_rewards.py:137-141)."""
    return len(text.split()) if text and text.strip() else 0


def unique_words(text: str) -> int:
    """Distinct lower-cased `\\b\\w+\\b` words, stopwords included (tldr_rewards.py:143-151)."""
    return len(set(_WORD.findall(text.lower())))


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of the content-word sets; 1.0 when both are empty (tldr_rewards.py:162-176)."""
    sa, sb = content_words(a), content_words(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def transition_categories(text: str) -> list[str]:
    """Categories with at least one phrase occurring as a substring (tldr_rewards.py:178-190)."""
    low = text.lower()
    return sorted(c for c, phrases in TRANSITION_WORDS.items() if any(p in low for p in phrases))


def transition_scale(num_categories: int) -> float:
    """tldr_rewards.py:375-385."""
    if num_categories <= 0:
        return 0.0
    return min(0.4 + min((num_categories - 1) * 0.05, 0.6), 1.0)


def score_pair(a: str, b: str, spec: WritingReward = TLDR) -> tuple[float, dict[str, Any]]:
    """Reward and level info of (writer_a's text, writer_b's text) under `spec`."""
    parts = {"lengths": 0.0, "ratio": 0.0, "unique": 0.0, "transitions": 0.0, "jaccard": 0.0}
    ta, tb = count_tokens(a), count_tokens(b)
    info: dict[str, Any] = {"level": 0, "max_reward": MAX_REWARD, "variant": spec.name,
                            "tokens": [ta, tb], "reward_parts": parts}
    lo, hi = spec.tokens
    if not (lo <= ta <= hi and lo <= tb <= hi):
        return 0.0, info
    parts["lengths"] = LENGTH_REWARD
    info["level"] = 1

    if len(a) == 0:  # unreachable after level 1, kept as the paper's guard
        return sum(parts.values()), info
    ratio = len(b) / len(a)
    info["length_ratio"] = ratio
    s = spec.length_ratio.score(ratio)
    if s is None:
        return sum(parts.values()), info
    parts["ratio"] = RATIO_REWARD * s
    info["level"] = 2

    ua, ub = unique_words(a), unique_words(b)
    info["unique_words"] = [ua, ub]
    if ua == 0:
        return sum(parts.values()), info
    info["unique_ratio"] = ub / ua
    s = spec.unique_ratio.score(ub / ua)
    if s is None:
        return sum(parts.values()), info
    parts["unique"] = UNIQUE_REWARD * s
    info["level"] = 3

    cats = transition_categories(a + b if spec.transitions_in_both else b)
    jac = jaccard(a, b)
    info["transition_categories"] = cats
    info["jaccard"] = jac
    parts["transitions"] = TRANSITION_WEIGHT * transition_scale(len(cats))
    parts["jaccard"] = JACCARD_WEIGHT * min(jac, spec.jaccard_cap) / spec.jaccard_cap
    info["level"] = 4
    return sum(parts.values()), info


def load_sources() -> list[dict[str, Any]]:
    with open(DATA_PATH, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class WritingTask(Task):
    """The paper's TLDR task on PEP abstracts."""

    name = "writing"
    spec: WritingReward = TLDR
    reward_shift: float = 0.0  # configs/maac_tldr_config.yaml:59 reward_processor.shift: 0.0
    early_stop_threshold: float | None = None  # no early termination in the writing configs

    def __init__(self, num_turns: int = 1):
        if num_turns < 1:
            raise ValueError(f"num_turns must be >= 1, got {num_turns}")
        self.agents = ("writer_a", "writer_b")
        self.num_turns = num_turns
        self._problems: dict[str, list[Problem]] = {"train": [], "eval": []}
        for row in load_sources():
            split = check_split(row["split"])
            self._problems[split].append(Problem(
                f"{self.name}/{row['id']}", split, {"title": row["title"], "text": row["text"]}))

    def problems(self, split: str) -> list[Problem]:
        return list(self._problems[check_split(split)])

    def new_episode(self, problem: Problem) -> WritingEpisode:
        return WritingEpisode(self, problem)

    def prompt(self, agent: str, payload: dict[str, Any]) -> str:
        """train_maac.py:69-106 `summary_agent_formatter` / `elaboration_agent_formatter`, with
        the post laid out as TL;DR posts are (title, then text)."""
        post = f"TITLE: {payload['title']}\nPOST: {payload['text']}"
        if agent == "writer_a":
            return (
                "Create a concise summary response to this post.\n\n"
                f"Query:\n{post}\n\n"
                "IMPORTANT INSTRUCTIONS:\n"
                "- Provide a brief, focused summary in one sentence or a few sentences\n"
                "- Be factual and informative\n"
            )
        return (
            "Create a detailed summary response to this post.\n\n"
            f"Original Query:\n{post}\n\n"
            "IMPORTANT INSTRUCTIONS:\n"
            "- Use more unique words\n"
            "- Use some transition words to improve flow\n"
        )


class WritingArxivTask(WritingTask):
    """The paper's arXiv task: expand an abstract into an introduction, agent 1 background and
    motivation, agent 2 methodology and implications (arxiv_rewards.py, train_maac.py:27-66)."""

    name = "writing_arxiv"
    spec = ARXIV
    reward_shift = 0.0  # configs/maac_arxiv_config.yaml:59
    early_stop_threshold = None

    def prompt(self, agent: str, payload: dict[str, Any]) -> str:
        """train_maac.py:27-66 `background_agent_formatter` / `complementary_agent_formatter`."""
        mine, other = (("background and motivation", "methodology and implications") if agent == "writer_a"
                       else ("methodology and implications", "the background and motivation"))
        return (
            "Based on the following scientific abstract, expand content for an introduction section.\n\n"
            f"Abstract:\n{payload['text']}\n\n"
            "IMPORTANT INSTRUCTIONS:\n"
            f"- There is another agent that will provide {other}\n"
            f"- You just need to focus on {mine}\n"
            f"- Avoid repeating {other.removeprefix('the ')} content\n"
        )


def _feedback(reward: float, info: dict[str, Any], spec: WritingReward, last: bool) -> str:
    """Feedback for a further turn. The paper's writing tasks have one turn and no feedback; this
    is our extension for num_turns > 1 and reports numbers only (never the partner's text)."""
    lo, hi = spec.tokens
    lines = [f"Feedback on your team's texts (reward {reward:.2f} / {MAX_REWARD:.1f}):",
             f"- Tokens: {info['tokens'][0]} and {info['tokens'][1]} (each wanted {lo}-{hi})."]
    if "length_ratio" in info:
        band = spec.length_ratio
        lines.append(f"- Length ratio second/first: {info['length_ratio']:.2f} "
                     f"(best {band.full_lo:g}-{band.full_hi:g}).")
    if "unique_ratio" in info:
        band = spec.unique_ratio
        best = f"{band.full_lo:g}+" if band.full_hi == math.inf else f"{band.full_lo:g}-{band.full_hi:g}"
        lines.append(f"- Unique-word ratio second/first: {info['unique_ratio']:.2f} (best {best}).")
    if "jaccard" in info:
        lines.append(f"- Transition categories: {len(info['transition_categories'])}; "
                     f"word overlap (Jaccard): {info['jaccard']:.3f} (best >= {spec.jaccard_cap:g}).")
    if not last:
        lines.append("\nRevise your text using this feedback. Reply with the text only.")
    return "\n".join(lines)


class WritingEpisode(TaskEpisode):
    task: WritingTask

    def _initial_prompt(self, agent: str) -> str:
        return self.task.prompt(agent, self.problem.payload)

    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        reward, info = score_pair(joint_action["writer_a"], joint_action["writer_b"], self.task.spec)
        last = self.is_last_turn
        text = _feedback(reward, info, self.task.spec, last)
        return reward, {a: text for a in self.agents}, info
