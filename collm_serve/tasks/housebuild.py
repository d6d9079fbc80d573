"""`housebuild`: the paper's HouseBuild (Minecraft), simulated offline exactly as the paper's code
scores it. Source: OpenMLRL/LLM_Collab_Minecraft at 9c2e006 (paths below are in that repository;
MIT licence), with house_build/configs/house_build_maac_config.yaml for every setting.

Target: a 3D house given as y-layers of rows of inventory letters (data/minecraft/housebuild.json
= house_build/dataset/data.json, unmodified): layer y, row r, column c is world (c, y, r) plus the
box's minimum corner; a letter maps to a block, `A` = air (house_builder.py:267-429). Data: 10
houses, train = the first 8, eval = the last 2 (`train_split: "[:8]"`, `eval_split: "[8:]"`).

Agents and palettes: both agents get the same blocks (config `task.block_agent1/2`):
white_concrete, obsidian, stone_stairs, stone_bricks, planks, air. Each turn both answer with
`/fill x1 y1 z1 x2 y2 z2 block` lines (exactly 7 arguments, both corners in the box) and may
send `/kill` (house_builder.py:58-155). Budget: 600 commands split evenly (`max_commands: 600`).
Limited resources (`limited_resource: true`): per agent and turn, the blocks an agent fills of
one kind may not exceed ceil(n/2) + floor(n/4), n = that block's count in the target
(compute_resource_limits, house_builder.py:441-452); a fill that would pass it is refused whole;
air is unlimited.

Reward of a turn, on THAT turn's commands only (the world starts empty each turn,
house_builder_reward.py:271-341): Agent 1's accepted fills, then Agent 2's, then
    match = cells of the box whose block equals the target's (air included) / cells of the box
    r = match - spider                                                   (at most 1.0)
(score_house_builder, house_builder.py:455-494). `spider`: 3 spiders with attacks drawn once per
run, randint(1, 3) each from random.Random(seed) (train_maac.py:110-163; ours: the task option
`rpg_seed`, default 0 -> attacks [2, 2, 1], damage 5), against 5 HP (`task.player.hp: 5`,
`task.spider: {num: 3, atk_low: 1, atk_high: 3}`): unless one agent's accepted commands include a
`/kill`, spider = min(1, damage / HP) * 0.1 (house_builder_reward.py:317-321). Then the reward
shift -1.0 (`reward_processor.shift: -1.0`) and early termination once the shifted reward is
> 0.0 (`maac.early_termination_threshold: 0.0`, the same in the iac config; the magrpo config
uses -0.1: pass `early_stop_threshold: -0.1` to play it). Note that with 0.0 the raw reward
would have to pass 1.0, so the actor-critic configs never stop early.

Prompts: turn 0 is the paper's per-agent prompt (house_build/utils/prompting.py:36-86: the
layers as rectangles per y, house_builder.py:497-582; the box; the spider threat) followed by the
resource limits (train_maac.py:257-275, 315-317). Between turns, score feedback
(`external.mode: score_feedback`, house_build/external/score_feedback.py:134-192): the turn
number, the previous turn's reward before the shift (4 decimals), then the original prompt and
the agent's own previous commands. See minecraft.py for the observation shape.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from collm_serve.tasks.base import Problem
from collm_serve.tasks.minecraft import (MinecraftEpisode, MinecraftTask, Refused, allowed_blocks, bbox_json,
                                         block_id, block_lines, coordinates, in_box, is_air, palette_block,
                                         read_commands, read_json)

DATA_PATH = Path(__file__).parent / "data" / "minecraft" / "housebuild.json"
N_TRAIN = 8  # config dataset.train_split "[:8]"
BLOCKS = ("white_concrete", "obsidian", "stone_stairs", "stone_bricks", "planks", "air")
PALETTES: dict[str, tuple[str, ...]] = {"builder_a": BLOCKS, "builder_b": BLOCKS}
MAX_COMMANDS = 600  # config task.max_commands
REWARD_SHIFT = -1.0  # config reward_processor.shift
EARLY_STOP_THRESHOLD = 0.0  # config maac/iac early_termination_threshold (magrpo: -0.1)
PLAYER_HP = 5  # config task.player.hp
SPIDERS, SPIDER_ATK = 3, (1, 3)  # config task.spider: num, atk_low, atk_high
SPIDER_WEIGHT = 0.1  # house_builder_reward.py:320

_THREAT = ("Threat check: There are {spider_num} spiders nearby; you have {player_hp} HP. Spider "
           "attack list: {spider_atk}, total damage dmg={spider_dmg}. If you want to kill them, "
           "output exactly one line: /kill. All other commands should be normal building commands.")
# The paper's user template (prompting.py:36-86); only the first line differs per agent.
_BODY = """
Task: Build the 3D structure from the provided y-axis slices.

Available blocks (use ONLY these):
{block_lines}

Layers (ascending WORLD y). Each layer is a set of rectangles in WORLD (x,z) coords:
- Format: y=ABS_Y: {{(x1, ABS_Y, z1, x2, ABS_Y, z2 block_id), (x1, ABS_Y, z1, x2, ABS_Y, z2 block_id)}}
{layers_text}

WORLD bbox (inclusive):
- from: {world_bbox_from}
- to:   {world_bbox_to}

""" + _THREAT + """

Constraints:
- Output ONLY Minecraft commands, one per line.
- Allowed commands: /fill and /kill
- Fill format: /fill x1 y1 z1 x2 y2 z2 block
- Use absolute integer coordinates only (no ~).
- Use ONLY blocks from the legend.
- Every coordinate must be within the bbox.
"""
TEMPLATES = {
    agent: f"You are Agent {i} in a 2-person Minecraft building team. You will place SOME of the "
           "blocks for the final build.\n" + _BODY
    for i, agent in enumerate(PALETTES, start=1)
}


def spider_attacks(seed: int, num: int = SPIDERS, atk: tuple[int, int] = SPIDER_ATK) -> list[int]:
    """The spiders' attack values as the paper draws them (train_maac.py:132-139)."""
    rng = random.Random(int(seed))
    return [rng.randint(*atk) for _ in range(num)]


@dataclass(frozen=True)
class House:
    task_id: str
    inventory: dict[str, str]  # letter -> block
    layers: dict[int, list[str]]  # y -> rows (z), each row a string over x
    lo: list[int]
    hi: list[int]

    @staticmethod
    def from_json(obj: dict[str, Any], index: int) -> House:
        """One entry of the paper's data.json (load_tasks_from_json, house_builder.py:267-403:
        a `bbox` when given, else x and z from 0 and y over the layers)."""
        task_id = str(obj.get("task_id") or f"house_build_{index:04d}")
        layers_obj = obj["target_spec"]["layers"]
        if isinstance(layers_obj, dict):
            items = layers_obj.items()
        else:
            items = ((e["y"], e["rows"]) for e in layers_obj)
        layers = {int(y): [str(r) for r in rows] for y, rows in items}
        ys = sorted(layers)
        depth, width = len(layers[ys[0]]), len(layers[ys[0]][0])
        for y, rows in layers.items():
            if len(rows) != depth or any(len(r) != width for r in rows):
                raise ValueError(f"{task_id}: layer y={y} is not {depth} rows of {width}")
        if obj.get("bbox"):
            a, b = obj["bbox"]["from"], obj["bbox"]["to"]
            lo, hi = [min(p, q) for p, q in zip(a, b)], [max(p, q) for p, q in zip(a, b)]
        else:
            lo, hi = [0, ys[0], 0], [max(0, width - 1), ys[-1], max(0, depth - 1)]
        if (hi[0] - lo[0] + 1, hi[2] - lo[2] + 1) != (width, depth) or \
                any(y not in layers for y in range(lo[1], hi[1] + 1)):
            raise ValueError(f"{task_id}: the box {lo}..{hi} does not match the layers")
        return House(task_id, {str(k): str(v) for k, v in obj["inventory"].items()}, layers, lo, hi)

    @cached_property
    def expected(self) -> dict[tuple[int, int, int], str]:
        """Every cell of the box -> its target block (air included) (house_builder.py:406-429)."""
        return {(self.lo[0] + x, y, self.lo[2] + z): block_id(self.inventory[ch])
                for y in range(self.lo[1], self.hi[1] + 1)
                for z, row in enumerate(self.layers[y]) for x, ch in enumerate(row)}

    @cached_property
    def resource_limits(self) -> dict[str, int]:
        """Per agent and turn: ceil(n/2) + n // 4 of each non-air block, n its target count
        (compute_resource_limits with 2 agents, house_builder.py:441-452)."""
        counts: dict[str, int] = {}
        for b in self.expected.values():
            counts[b] = counts.get(b, 0) + 1
        n_agents = 2
        return {b: -(-counts.get(b, 0) // n_agents) + counts.get(b, 0) // (2 * n_agents)
                for b in sorted(set(counts) | {block_id(v) for v in self.inventory.values()})
                if b not in ("air", "cave_air", "void_air")}

    def rectangles(self, y: int) -> list[tuple[int, int, int, int, str]]:
        """Layer y as (x1, z1, x2, z2, block) rectangles: runs of one block along x, merged
        with the same run (same x1, x2, block) of the row before; a rectangle is listed when it
        stops growing, in the order it was opened (rows_to_rects, house_builder.py:497-546)."""
        growing: dict[tuple[int, int, str], list] = {}
        done: list[tuple[int, int, int, int, str]] = []
        for z, row in enumerate(self.layers[y]):
            runs, start = [], 0
            for x in range(1, len(row) + 1):
                if x == len(row) or row[x] != row[start]:
                    runs.append((start, x - 1, self.inventory[row[start]]))
                    start = x
            nxt = {}
            for x1, x2, block in runs:
                rect = growing.pop((x1, x2, block), None) or [self.lo[0] + x1, self.lo[2] + z,
                                                              self.lo[0] + x2, 0, block]
                rect[3] = self.lo[2] + z
                nxt[(x1, x2, block)] = rect
            done += [tuple(r) for r in growing.values()]
            growing = nxt
        return done + [tuple(r) for r in growing.values()]

    def layers_text(self) -> str:
        """`y=Y: {(x1, Y, z1, x2, Y, z2 block), ...}` per layer, air left out
        (format_layers_text with include_air_rects false, house_builder.py:549-582)."""
        lines = []
        for y in range(self.lo[1], self.hi[1] + 1):
            rects = [r for r in self.rectangles(y) if not is_air(r[4])]
            shown = ", ".join(f"({x1}, {y}, {z1}, {x2}, {y}, {z2} {b})" for x1, z1, x2, z2, b in rects)
            lines.append(f"y={y}: {{{shown}}}")
        return "\n".join(lines)


def parse_commands(text: str, palette: tuple[str, ...], house: House, limit: int
                   ) -> tuple[list[tuple[str, tuple]], list[dict[str, str]]]:
    """(accepted ("fill", (x1, y1, z1, x2, y2, z2, block)) or ("kill", ()), rejected
    {line, reason}) for one agent's turn (validate_and_normalize_mc_commands with resource
    limits, house_builder.py:58-155)."""
    allowed = allowed_blocks(palette)
    used: dict[str, int] = {}

    def command(parts: list[str]) -> tuple[str, tuple]:
        name = parts[0].lower()
        if name == "kill":
            return "kill", ()
        if name != "fill":
            raise Refused(f"unsupported command: {name}")
        if len(parts) < 8:
            raise Refused("fill needs: /fill x1 y1 z1 x2 y2 z2 block")
        xyz = coordinates(parts[1:7], "fill")
        block = palette_block(parts[7], allowed)
        if not (in_box(tuple(xyz[:3]), house.lo, house.hi) and in_box(tuple(xyz[3:]), house.lo, house.hi)):
            raise Refused("fill coord out of bbox")
        if len(parts) > 8:
            raise Refused("fill modes (replace/keep/...) not allowed")
        cap = None if is_air(block) else house.resource_limits.get(block)
        if cap is not None:
            volume = (abs(xyz[3] - xyz[0]) + 1) * (abs(xyz[4] - xyz[1]) + 1) * (abs(xyz[5] - xyz[2]) + 1)
            if used.get(block, 0) + volume > cap:
                raise Refused(f"exceeds resource limit for {block}: {used.get(block, 0) + volume}>{cap}")
            used[block] = used.get(block, 0) + volume
        return "fill", (*xyz, block)

    return read_commands(text, limit, command)


def fill(world: dict[tuple[int, int, int], str], args: tuple) -> None:
    x1, y1, z1, x2, y2, z2, block = args
    for y in range(min(y1, y2), max(y1, y2) + 1):
        for x in range(min(x1, x2), max(x1, x2) + 1):
            for z in range(min(z1, z2), max(z1, z2) + 1):
                world[(x, y, z)] = block


def score_world(world: dict[tuple[int, int, int], str], house: House) -> dict[str, Any]:
    """Match ratio over every cell of the box, and IoU of the solid cells for diagnostics
    (score_house_builder, house_builder.py:455-494)."""
    observed = {c: world.get(c, "air") for c in house.expected}
    correct = sum(1 for c, b in house.expected.items() if observed[c] == b)
    want = {c for c, b in house.expected.items() if not is_air(b)}
    have = {c for c, b in observed.items() if not is_air(b)}
    union = len(want | have)
    return {"score_match": correct / len(house.expected), "match_correct": correct,
            "match_total": len(house.expected), "iou": len(want & have) / union if union else 0.0}


class HouseBuildTask(MinecraftTask, palettes=PALETTES, max_commands=MAX_COMMANDS, read_turn=parse_commands):
    name = "housebuild"

    def __init__(self, num_turns: int = 4, reward_shift: float = REWARD_SHIFT,
                 early_stop_threshold: float | None = EARLY_STOP_THRESHOLD, rpg_seed: int = 0):
        super().__init__(num_turns, reward_shift, early_stop_threshold)
        self.spider_attacks = spider_attacks(rpg_seed)
        self.spider_damage = float(sum(self.spider_attacks))
        self._houses: dict[str, House] = {}
        for idx, obj in enumerate(read_json(DATA_PATH), start=1):
            house = House.from_json(obj, idx)
            split = "train" if idx <= N_TRAIN else "eval"
            pid = f"housebuild/{house.task_id}"
            payload = {"task_id": house.task_id, "inventory": house.inventory,
                       "layers": {str(y): rows for y, rows in house.layers.items()},
                       "bbox_from": house.lo, "bbox_to": house.hi}
            self._houses[pid] = house
            self._problems[split].append(Problem(pid, split, payload))

    def new_episode(self, problem: Problem) -> HouseBuildEpisode:
        return HouseBuildEpisode(self, problem)

    def target(self, problem: Problem) -> House:
        return self._houses[problem.problem_id]

    def spider_penalty(self, killed: bool) -> float:
        if killed or PLAYER_HP <= 0 or self.spider_damage <= 0:
            return 0.0
        return min(1.0, self.spider_damage / PLAYER_HP) * SPIDER_WEIGHT

    def prompt(self, agent: str, house: House) -> str:
        """The paper's turn-0 user prompt (prompting.py:36-86, train_maac.py:272-317)."""
        text = TEMPLATES[agent].format(
            block_lines=block_lines(PALETTES[agent]), layers_text=house.layers_text(),
            world_bbox_from=bbox_json(house.lo), world_bbox_to=bbox_json(house.hi),
            spider_num=len(self.spider_attacks), player_hp=PLAYER_HP,
            spider_atk="[" + ", ".join(map(str, self.spider_attacks)) + "]" if self.spider_attacks else "[]",
            spider_dmg=self.spider_damage,
        ).rstrip()
        limits = [f"- {block_id(b)}: {house.resource_limits[block_id(b)]}"
                  for b in house.inventory.values() if block_id(b) in house.resource_limits]
        if limits:
            text += "\n\nResource limits per agent (air unlimited):\n" + "\n".join(limits)
        return text


class HouseBuildEpisode(MinecraftEpisode):
    task: HouseBuildTask
    target: House

    @property
    def house(self) -> House:
        return self.target

    def _score(self, accepted: dict[str, list]) -> tuple[float, dict[str, Any]]:
        world: dict[tuple[int, int, int], str] = {}
        for agent in self.agents:  # Agent 2's fills overwrite Agent 1's
            for kind, args in accepted[agent]:
                if kind == "fill":
                    fill(world, args)
        killed = any(kind == "kill" for cmds in accepted.values() for kind, _ in cmds)
        score = score_world(world, self.target)
        spider = self.task.spider_penalty(killed)
        return score["score_match"] - spider, {**score, "spider_penalty": spider, "killed": killed}

    def _feedback(self, agent: str, reward: float, previous: str) -> str:
        """The paper's score feedback (score_feedback.py:134-192): the reward before the shift."""
        header = ["Score feedback:", f"- Turn: {self.turn + 2}", f"- Previous reward: {reward:.4f}",
                  "- Do not output any text other than commands."]
        return self.followup(header, self.task.prompt(agent, self.target), previous)
