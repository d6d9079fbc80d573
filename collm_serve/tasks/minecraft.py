"""What StrBuild and HouseBuild share, as the paper's code does it (OpenMLRL/LLM_Collab_Minecraft
at 9c2e006; paths below are in that repository): reading commands out of a response, the
system prompt, the per-agent command budget, and the paper-shaped observation.

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

from collm_serve.tasks.base import TaskEpisode

# str_build/utils/prompting.py:6-10 and house_build/utils/prompting.py:6-10 (identical).
SYSTEM_PROMPT = (
    "You are a Minecraft building agent.\n"
    "Output must be Minecraft commands only (no markdown, no code fences, no extra text).\n"
    "This is strict: any non-command text is invalid."
)
AIR_BLOCKS = frozenset({"air", "cave_air", "void_air"})

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


class MinecraftEpisode(TaskEpisode):
    """An episode whose observation is the paper's prompt of the current turn: [system, user].

    Subclasses return the next turn's full user prompt as each agent's feedback (the paper's
    external transition), so `_history[agent][-1]` (a user message) is always the current prompt.
    """

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

