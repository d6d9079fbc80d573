"""What StrBuild and HouseBuild share, as the paper's code does it (OpenMLRL/LLM_Collab_Minecraft
at 9c2e006; paths below are in that repository): reading commands out of a response (the
line loop with its budget and the checks of coordinates and palette; each task parses its own
commands), the system prompt, the per-agent command budget, the task's construction
(`MinecraftTask`), the turn (`MinecraftEpisode._evaluate`) and the paper-shaped observation.

Reading a response (str_build/utils/str_builder.py:20-55, the same in house_build/utils/
house_builder.py:20-55): when the text contains a fenced block, only the FIRST fenced block is
read (its language tag dropped); blank lines go; a leading list marker (`-`, `*`, `1.`, `1)`) is
stripped from each line. Coordinates are integers as Python's `int` reads them; `~` and `^`
(relative coordinates) are refused. A `minecraft:` prefix on a block id is dropped, nothing else
is normalised (block ids are case-sensitive).

Observation (the paper's multi-turn prompts, comlrl/trainers/actor_critic/maac.py:588-616):
turn 0 is the system prompt and the agent's task prompt (chat template on: str_build/configs/
*.yaml `use_chat_template: true`, train_maac.py:94-114); every later turn REPLACES the prompt
with the external transition's text (the feedback of the turn before: the original prompt and
the agent's own previous commands are inside it, `original_prompt: true`,
`previous_response: true`). So an agent sees [system, user], never a growing chat. Difference:
the paper's later-turn prompt is passed to the model as raw text with the system prompt inlined
and no chat template (train_maac.py:159-167 returns the override string as is); ours is
chat-formatted as [system, user] like turn 0.
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from collm_serve.tasks.base import Problem, Task, TaskEpisode, check_split

# str_build/utils/prompting.py:6-10 and house_build/utils/prompting.py:6-10 (identical).
SYSTEM_PROMPT = (
    "You are a Minecraft building agent.\n"
    "Output must be Minecraft commands only (no markdown, no code fences, no extra text).\n"
    "This is strict: any non-command text is invalid."
)
AIR_BLOCKS = frozenset({"air", "cave_air", "void_air"})
REJECTED_SHOWN = 20  # rejected lines per agent kept in `info` (all are counted)

_LIST_MARKER = re.compile(r"^\s*(?:[-*]+|\d+[.)])\s*")
_FENCE_TAG = re.compile(r"^\s*[a-zA-Z0-9_-]+\s*\n")


def block_id(name: str) -> str:
    """`minecraft:stone` -> `stone` (str_builder.py:13-17)."""
    s = (name or "").strip()
    return s[len("minecraft:"):] if s.startswith("minecraft:") else s


def is_air(name: str | None) -> bool:
    return name is None or block_id(name) in AIR_BLOCKS


def command_lines(text: str) -> list[str]:
    """The candidate command lines of a response (str_builder.py:20-43)."""
    raw = (text or "").strip()
    if "```" in raw:
        parts = raw.split("```")
        if len(parts) >= 3:  # an opened and closed fence: read its inside only
            raw = _FENCE_TAG.sub("", parts[1].strip()).strip()
    lines = []
    for line in raw.splitlines():
        s = _LIST_MARKER.sub("", line.strip()).strip()
        if s:
            lines.append(s)
    return lines


def coordinate(token: str) -> int | None:
    """An absolute integer coordinate, or None (relative `~`/`^` or not a number;
    str_builder.py:46-55)."""
    t = (token or "").strip()
    if not t or t[0] in "~^":
        return None
    try:
        return int(t)
    except ValueError:
        return None


def split_command(line: str) -> list[str]:
    """`/setblock 1 2 3 stone` -> ["setblock", "1", "2", "3", "stone"] (leading `/` optional)."""
    s = (line or "").strip()
    if s.startswith("/"):
        s = s[1:].lstrip()
    return s.split()


class Refused(ValueError):
    """A command line the rules refuse; the message is the reason the paper's code gives."""


def read_commands(text: str, limit: int, parse: Callable[[list[str]], Any]
                  ) -> tuple[list[Any], list[dict[str, str]]]:
    """One agent's turn: (accepted commands in order, rejected {line, reason}). Each candidate
    line past the budget `limit` is refused; otherwise `parse(words)` returns the accepted command
    or raises `Refused` (validate_and_normalize_mc_commands, str_builder.py:58-117 and
    house_builder.py:58-155: the same loop, different commands)."""
    accepted, rejected = [], []
    for line in command_lines(text):
        if len(accepted) >= limit:
            rejected.append({"line": line, "reason": f"exceeds max_commands={limit}"})
            continue
        parts = split_command(line)
        if not parts:
            continue
        try:
            accepted.append(parse(parts))
        except Refused as e:
            rejected.append({"line": line, "reason": str(e)})
    return accepted, rejected


def coordinates(tokens: list[str], command: str) -> list[int]:
    """Absolute integer coordinates, or `Refused` naming the command."""
    xyz = [coordinate(t) for t in tokens]
    if None in xyz:
        raise Refused(f"{command} coords must be absolute integers (no ~)")
    return xyz


def allowed_blocks(palette: tuple[str, ...]) -> frozenset[str]:
    """An agent's palette as block ids; air is always allowed (it removes a block)."""
    return frozenset(block_id(b) for b in palette) | {"air"}


def palette_block(token: str, allowed: frozenset[str]) -> str:
    """The block id of `token`, or `Refused` when it is not in the agent's palette."""
    block = block_id(token)
    if block not in allowed:
        raise Refused(f"block not allowed: {block}")
    return block


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def command_limits(max_commands: int, n_agents: int) -> list[int]:
    """The per-agent command budget: an even split, the remainder to the first agent
    (str_builder_reward.py:227-229, external/position_feedback.py:51-54)."""
    per = max(1, max_commands // n_agents)
    limits = [per] * n_agents
    limits[0] += max_commands % n_agents
    return limits


def bbox_json(corner: list[int]) -> str:
    """`[0, 0, 0]` as the prompts print it: `[0,0,0]` (train_maac.py:177-178)."""
    return json.dumps(list(corner), separators=(",", ":"))


def block_lines(blocks: list[str] | tuple[str, ...]) -> str:
    return "\n".join(f"- {b}" for b in blocks)


def in_box(pos: tuple[int, int, int], lo: list[int], hi: list[int]) -> bool:
    return all(min(a, b) <= p <= max(a, b) for p, a, b in zip(pos, lo, hi))


class MinecraftTask(Task):
    """What StrBuild and HouseBuild construct alike: the agents in palette order, the number of
    turns, the reward shift and early-stop threshold (each task's class defaults are the paper's
    config), and the problems per split, which the subclass fills in `_problems`. A subclass
    also names its target of a problem, its turn-0 prompt and how it reads one agent's turn."""

    palettes: ClassVar[dict[str, tuple[str, ...]]]  # agent -> blocks (config task.block_agent1/2)
    max_commands: ClassVar[int]  # config task.max_commands, both agents together
    # (response, the agent's palette, the target, the agent's budget) -> (accepted, rejected)
    read_turn: ClassVar[Callable[[str, tuple[str, ...], Any, int], tuple[list, list[dict[str, str]]]]]

    def __init_subclass__(cls, *, palettes: dict[str, tuple[str, ...]], max_commands: int,
                          read_turn: Callable, **kwargs: Any):
        """A task declares its per-task constants in its class statement
        (`class X(MinecraftTask, palettes=..., max_commands=..., read_turn=...)`), so a task that
        forgets one fails where it is defined, not at its first turn. The reward shift and the
        early-stop threshold are `__init__` arguments instead (set per instance; each subclass's
        defaults are the paper's config values)."""
        super().__init_subclass__(**kwargs)
        if not palettes or max_commands < len(palettes):
            raise ValueError(f"{cls.__name__}: palettes must name the agents and max_commands "
                             f"give each at least one command, got {len(palettes)} agents, {max_commands}")
        cls.palettes = palettes
        cls.max_commands = max_commands
        cls.read_turn = staticmethod(read_turn)

    def __init__(self, num_turns: int, reward_shift: float, early_stop_threshold: float | None):
        if num_turns < 1:
            raise ValueError(f"num_turns must be >= 1, got {num_turns}")
        self.agents = tuple(self.palettes)
        self.num_turns = num_turns
        self.reward_shift = float(reward_shift)
        self.early_stop_threshold = None if early_stop_threshold is None else float(early_stop_threshold)
        self._problems: dict[str, list[Problem]] = {"train": [], "eval": []}

    def problems(self, split: str) -> list[Problem]:
        return list(self._problems[check_split(split)])

    @abstractmethod
    def target(self, problem: Problem) -> Any:
        """What the agents build on `problem` (the scorer's and the prompt's view of it)."""

    @abstractmethod
    def prompt(self, agent: str, target: Any) -> str:
        """`agent`'s turn-0 user prompt (also the base of every later turn's)."""


class MinecraftEpisode(TaskEpisode):
    """An episode whose observation is the paper's prompt of the current turn: [system, user].

    Subclasses return the next turn's full user prompt as each agent's feedback (the paper's
    external transition), so `_history[agent][-1]` (a user message) is always the current prompt.

    A turn (`_evaluate`, as both reward functions do it): each agent's response is read in agent
    order (`Task.read_turn`, within the agent's share of the command budget); the world starts
    empty every turn, so only this turn's commands are scored (`_score`); then each agent's
    feedback.
    """

    task: MinecraftTask

    def __init__(self, task: MinecraftTask, problem: Problem):
        self.target = task.target(problem)
        self.limits = dict(zip(task.agents, command_limits(task.max_commands, len(task.agents))))
        super().__init__(task, problem)

    def _initial_prompt(self, agent: str) -> str:
        return self.task.prompt(agent, self.target)

    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        accepted, rejected = {}, {}
        for agent in self.agents:  # Agent 1 first, then Agent 2 (a later command on a cell wins)
            accepted[agent], rejected[agent] = self.task.read_turn(
                joint_action[agent], self.task.palettes[agent], self.target, self.limits[agent])
        reward, info = self._score(accepted)
        feedback = {a: self._feedback(a, reward, joint_action[a]) for a in self.agents}
        info = {
            **info,
            "accepted": {a: len(v) for a, v in accepted.items()},
            "rejected": {a: v[:REJECTED_SHOWN] for a, v in rejected.items()},
            "rejected_count": {a: len(v) for a, v in rejected.items()},
        }
        return reward, feedback, info

    @abstractmethod
    def _score(self, accepted: dict[str, list]) -> tuple[float, dict[str, Any]]:
        """(the turn's reward before the shift, level diagnostics) of the accepted commands."""

    @abstractmethod
    def _feedback(self, agent: str, reward: float, previous: str) -> str:
        """`agent`'s next prompt; `reward` is this turn's, before the shift."""

    def observation(self, agent: str) -> list[dict[str, str]]:
        history = super().observation(agent)  # validates `agent`, copies
        prompt = next(m for m in reversed(history) if m["role"] == "user")
        return [{"role": "system", "content": SYSTEM_PROMPT}, prompt]

    @staticmethod
    def followup(header: list[str], base_prompt: str, previous: str) -> str:
        """The paper's next-turn prompt without its inlined system prompt: a feedback header,
        the original prompt (`original_prompt: true`) and the agent's own previous commands
        (`previous_response: true`) (position_feedback.py:84-117, score_feedback.py:169-190)."""
        parts = list(header)
        if base_prompt:
            parts += ["", base_prompt]
        if previous.strip():
            parts += ["", "Your previous commands:", previous.strip()]
        return "\n".join(parts).strip()

