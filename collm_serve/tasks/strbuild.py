"""`strbuild`: the paper's StrBuild (Minecraft), simulated offline exactly as the paper's code
scores it. Source: OpenMLRL/LLM_Collab_Minecraft at 9c2e006 (paths below are in that repository;
MIT licence), with str_build/configs/str_build_maac_config.yaml for every setting.

Target: a string drawn in a 5x5 font (data/minecraft/strbuild.json, the font of
str_build/utils/str_builder.py:158-185) on a flat plane: letters left to right, 2 empty columns
between letters (`spacing: 2`), upper-cased, an unknown character drawn blank
(str_builder.py:188-205). Rows are top-down; cell (column c, row r) is world (c, 4 - r, 0), the
box is [0,0,0]..[width-1,4,0] (str_builder.py:219-260, 300-314; `local_z: 0`).
Data: the paper's 10 strings, train = the first 8, eval = the last 2 (`train_split: "[:8]"`,
`eval_split: "[8:]"`).

Agents and palettes (config `task.block_agent1/2`; `air` is in both and removes a block):
    builder_a (Agent 1): oak_planks, stone          builder_b (Agent 2): white_concrete, obsidian
Each turn both answer with `/setblock x y z block` lines. Budget: 300 commands split evenly
(`max_commands: 300`, 150 each, str_builder_reward.py:227-229). A line is accepted when it is a
`setblock` with >= 4 arguments (extra ones ignored), absolute integer coordinates, a block of the
agent's palette, inside the box, and within the budget (str_builder.py:58-117).

Reward of a turn, on THAT turn's commands only (the world starts empty every turn: the paper's
reward function simulates only the completions it is given, str_builder_reward.py:231-278):
Agent 1's accepted commands, then Agent 2's (a later command on a cell wins), then
(score_str_builder, str_builder.py:399-492)
    coverage  = covered target cells / target cells
    extra     = non-air cells off the target / (box cells - target cells)       (0 if none)
    adjacency = same-texture pairs / all pairs of horizontally or vertically adjacent non-air
                cells (x+1 and y+1 neighbours)                                   (0 if none)
    missing   = number of palettes (one per agent, air excluded) not ALL present in the world
    r = 2.0 * coverage - 1.5 * extra - 1.0 * adjacency - 0.25 * missing     (at most 2.0)
Textures (str_builder.py:270-297): *_planks/*_wood -> wood, stone/*_stone/*_stone_bricks ->
stone, *_concrete -> concrete, obsidian -> obsidian. Then the reward shift -2.0 (config
`reward_processor.shift: -2.0`) and early termination once the shifted reward is > -0.1
(`early_termination_threshold: -0.1`, the same in the maac, iac and magrpo configs), i.e. a raw
reward above 1.9 ends the episode (tasks/base.py).

Prompts: turn 0 is the paper's per-agent prompt (str_build/utils/prompting.py:40-102) with the
target grid left OUT (`prompt.provide_graph: false` in every config: the grid lines are dropped,
prompting.py:114-134), so the first turn is played from the box alone; `provide_graph=True`
shows it. Between turns, position feedback (`external.mode: position_feedback`,
str_build/external/position_feedback.py:18-117): every target position (top row first, then x),
a suggested subset size (half), the agent's budget and palette, then the original prompt and the
agent's own previous commands. It never quotes the partner. See minecraft.py for the
observation shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from collm_serve.tasks.base import Problem
from collm_serve.tasks.minecraft import (MinecraftEpisode, MinecraftTask, Refused, allowed_blocks, bbox_json,
                                         block_id, block_lines, coordinates, in_box, is_air, palette_block,
                                         read_commands, read_json)

DATA_PATH = Path(__file__).parent / "data" / "minecraft" / "strbuild.json"
PALETTES: dict[str, tuple[str, ...]] = {  # config task.block_agent1 / block_agent2
    "builder_a": ("oak_planks", "stone", "air"),
    "builder_b": ("white_concrete", "obsidian", "air"),
}
MAX_COMMANDS = 300  # config task.max_commands, both agents together
SPACING = 2  # config dataset.spacing
GLYPH = 5  # the font is 5x5
REWARD_SHIFT = -2.0  # config reward_processor.shift
EARLY_STOP_THRESHOLD = -0.1  # config {maac,iac,magrpo}.early_termination_threshold
# score_str_builder's weights (str_builder.py:458-473)
W_COVERAGE, W_EXTRA, W_ADJACENCY, W_MISSING_PALETTE = 2.0, 1.5, 1.0, 0.25
_TEXTURES = {"oak_planks": "wood", "oak_wood": "wood", "cobblestone": "stone",
             "smooth_stone": "stone", "stone_bricks": "stone"}

# The paper's user templates (prompting.py:40-102). Lines starting with "@" exist only when the
# target grid is shown (`provide_graph`, prompting.py:114-134 drops exactly these lines).
_COMMON = """
@The target is a character grid made of '#' and '.'. Its size matches the bbox and target rows.
@Output /setblock commands for a subset of '#' positions.

@Target grid (top-down rows):
@{target_ascii}

WORLD bbox (inclusive):
- from: {world_bbox_from}
- to:   {world_bbox_to}

Coordinate mapping (absolute coords):
- Let (min_x, min_y, min_z) be bbox.from and (max_x, max_y, max_z) be bbox.to.
- x increases from min_x to max_x (left to right).
- y increases from min_y to max_y (bottom to top).
- z is constant (min_z == max_z).

Available blocks (use ONLY these):
{block_lines}

Constraints:
- Output ONLY Minecraft commands, one per line.
- Allowed commands: /setblock only.
- Use absolute integer coordinates only (no ~).
@- Place blocks ONLY at '#' positions; leave '.' as air.
- Adjacent blocks (sharing a side) must NOT be the same texture.
- Every coordinate must be within the bbox.
Format: /setblock <x> <y> <z> <block>
"""
TEMPLATES = {
    "builder_a": "You are Agent 1 in a 2-person Minecraft building team. You will place SOME of "
                 "the blocks for the final build.\n" + _COMMON,
    "builder_b": "You are Agent 2 in a 2-person Minecraft building team. You will place SOME of "
                 "the blocks for the final build.\nYou write after Agent 1, so your /setblock "
                 "commands overwrite Agent 1's results.\n@Choose a reasonable subset of '#' "
                 "positions to write.\n" + _COMMON,
}


def texture(block: str) -> str:
    """The texture class of a block for the adjacency penalty (str_builder.py:270-297)."""
    s = block_id(block).lower()
    if s in _TEXTURES:
        return _TEXTURES[s]
    if s.endswith(("_planks", "_wood")):
        return "wood"
    if s == "stone" or s.endswith(("_stone", "_stone_bricks")):
        return "stone"
    if s.endswith("_concrete"):
        return "concrete"
    return s


def load_font() -> dict[str, list[str]]:
    return read_json(DATA_PATH)["font_5x5"]


def render_rows(text: str, font: dict[str, list[str]], spacing: int = SPACING) -> list[str]:
    """`text` drawn top-down with '#' (block) and '.' (empty) (str_builder.py:188-205)."""
    text = text.strip().upper()
    rows = [""] * GLYPH
    for i, ch in enumerate(text):
        glyph = font.get(ch, ["0" * GLYPH] * GLYPH)
        for r in range(GLYPH):
            rows[r] += glyph[r].replace("1", "#").replace("0", ".")
            if i < len(text) - 1:
                rows[r] += "." * spacing
    return rows


@dataclass(frozen=True)
class StrTarget:
    rows: tuple[str, ...]  # top-down
    z: int = 0

    @property
    def width(self) -> int:
        return len(self.rows[0]) if self.rows else 0

    @property
    def height(self) -> int:
        return len(self.rows)

    @property
    def bbox(self) -> tuple[list[int], list[int]]:
        return [0, 0, self.z], [max(0, self.width - 1), max(0, self.height - 1), self.z]

    @cached_property
    def positions(self) -> frozenset[tuple[int, int, int]]:
        """World cells of the '#'s: column c of row r is (c, height-1-r, z)."""
        return frozenset((c, self.height - 1 - r, self.z)
                         for r, row in enumerate(self.rows) for c, ch in enumerate(row) if ch == "#")


def parse_setblocks(text: str, palette: tuple[str, ...], target: StrTarget, limit: int
                    ) -> tuple[list[tuple[tuple[int, int, int], str]], list[dict[str, str]]]:
    """(accepted (cell, block) in order, rejected {line, reason}) (str_builder.py:58-117)."""
    allowed = allowed_blocks(palette)
    lo, hi = target.bbox

    def setblock(parts: list[str]) -> tuple[tuple[int, int, int], str]:
        if parts[0].lower() != "setblock":
            raise Refused(f"unsupported command: {parts[0].lower()}")
        if len(parts) < 5:
            raise Refused("setblock needs: /setblock x y z block")
        x, y, z = coordinates(parts[1:4], "setblock")
        block = palette_block(parts[4], allowed)
        if not in_box((x, y, z), lo, hi):
            raise Refused("setblock coord out of bbox")
        return (x, y, z), block

    return read_commands(text, limit, setblock)


def score_world(world: dict[tuple[int, int, int], str], target: StrTarget,
                palettes: list[tuple[str, ...]]) -> dict[str, Any]:
    """The StrBuild score of a world (cell -> block; air = empty) (str_builder.py:399-492)."""
    solid = {c: block_id(b) for c, b in world.items() if not is_air(b)}
    n_target = len(target.positions)
    covered = sum(1 for c in target.positions if c in solid)
    extra = sum(1 for c in solid if c not in target.positions)
    background = target.width * target.height - n_target
    coverage = covered / n_target if n_target else 0.0
    extra_ratio = extra / background if background > 0 else 0.0
    tex = {c: texture(b) for c, b in solid.items()}
    pairs = same = 0
    for (x, y, z), t in tex.items():
        for n in ((x + 1, y, z), (x, y + 1, z)):
            if n in tex:
                pairs += 1
                same += tex[n] == t
    adjacency = same / pairs if pairs else 0.0
    present = set(solid.values())
    missing = sum(1 for p in palettes if not {block_id(b) for b in p if not is_air(b)} <= present)
    terms = {"coverage": W_COVERAGE * coverage, "extra": -W_EXTRA * extra_ratio,
             "adjacency": -W_ADJACENCY * adjacency, "missing_palette": -W_MISSING_PALETTE * missing}
    return {
        "score": sum(terms.values()), "terms": terms,
        "target_total": n_target, "covered": covered, "coverage_ratio": coverage,
        "extra_blocks": extra, "extra_ratio": extra_ratio,
        "adjacent_same_texture_pairs": same, "adjacent_pairs": pairs, "adjacency_ratio": adjacency,
        "missing_palettes": missing,
    }


class StrBuildTask(MinecraftTask, palettes=PALETTES, max_commands=MAX_COMMANDS, read_turn=parse_setblocks):
    name = "strbuild"

    def __init__(self, num_turns: int = 4, reward_shift: float = REWARD_SHIFT,
                 early_stop_threshold: float | None = EARLY_STOP_THRESHOLD,
                 provide_graph: bool = False):
        super().__init__(num_turns, reward_shift, early_stop_threshold)
        self.provide_graph = bool(provide_graph)
        doc = read_json(DATA_PATH)
        font, n_train = doc["font_5x5"], doc["n_train"]
        for idx, item in enumerate(doc["strings"], start=1):
            split = "train" if idx <= n_train else "eval"
            task_id = f"str_build_{idx:04d}"  # the paper's ids (str_builder.py:248)
            payload = {"task_id": task_id, "string": item["string"],
                       "difficulty": item["difficulty"], "rows": render_rows(item["string"], font)}
            self._problems[split].append(Problem(f"strbuild/{task_id}", split, payload))

    def new_episode(self, problem: Problem) -> StrBuildEpisode:
        return StrBuildEpisode(self, problem)

    def target(self, problem: Problem) -> StrTarget:
        return StrTarget(tuple(problem.payload["rows"]))

    def prompt(self, agent: str, target: StrTarget) -> str:
        """The paper's turn-0 user prompt of `agent` (prompting.py:40-102, train_maac.py:165-188)."""
        lines = []
        for line in TEMPLATES[agent].splitlines():
            if line.startswith("@"):
                if not self.provide_graph:
                    continue
                line = line[1:]
            lines.append(line)
        lo, hi = target.bbox
        return "\n".join(lines).format(
            target_ascii="\n".join(target.rows), world_bbox_from=bbox_json(lo),
            world_bbox_to=bbox_json(hi), block_lines=block_lines(PALETTES[agent]),
        ).rstrip()


class StrBuildEpisode(MinecraftEpisode):
    task: StrBuildTask
    target: StrTarget

    def _score(self, accepted: dict[str, list]) -> tuple[float, dict[str, Any]]:
        world: dict[tuple[int, int, int], str] = {}
        for agent in self.agents:  # Agent 2's setblocks overwrite Agent 1's
            world.update(accepted[agent])
        score = score_world(world, self.target, [PALETTES[a] for a in self.agents])
        return score["score"], score

    def _feedback(self, agent: str, reward: float, previous: str) -> str:
        """The paper's position feedback for the next turn (position_feedback.py:49-117); it does
        not quote the reward."""
        positions = sorted(self.target.positions, key=lambda p: (-p[1], p[0], p[2]))
        shown = "\n".join(f"- ({x}, {y}, {z})" for x, y, z in positions) or "- (none)"
        header = [
            "Position feedback (subset selection):",
            f"- Turn: {self.turn + 2}",  # the 1-based number of the next turn
            "- Coordinates are absolute (x, y, z).",
            "- Output /setblock commands only (no markdown).",
            f"- Choose a subset of about half the positions (target size ~ "
            f"{max(1, len(positions) // 2) if positions else 0}).",
            "- Try to avoid selecting any 4-connected adjacent pairs (sharing a side) within your subset.",
            f"- Max commands allowed: {self.limits[agent]}",
            "",
            "All letter positions:",
            shown,
            "",
            "Available blocks (use ONLY these):",
            block_lines(PALETTES[agent]),
            "",
            "Format: /setblock <x> <y> <z> <block>",
        ]
        return self.followup(header, self.task.prompt(agent, self.target), previous)
