"""`build`: a long-horizon two-builder voxel game after the paper's StrBuild (Minecraft),
simulated offline by voxel.py. 4 turns by default.

Data: `data/build_targets.json` (original, CC0): 8 "train" and 4 "eval" target shapes in a
5x5x5 grid (walls, towers, letters, an arch, a cube).

Agents and palettes (PALETTES; `air` removes a block and is allowed to both):
    builder_a: red_wool (R), white_wool (W)      builder_b: blue_wool (B), black_wool (K)
Each turn both respond with `/setblock x y z block` lines; builder_a's valid commands are applied
first, then builder_b's (a later command on the same cell wins). The world persists across
turns. Observations show the agent the target as layer maps, its own and its partner's palette,
the current world (the shared environment state, which includes blocks the partner placed -
never the partner's raw text), and feedback: the score, missing cells and extra blocks (each
list truncated to CELLS_SHOWN), same-block adjacencies, the agent's OWN invalid lines with
reasons, and only the NUMBER of the partner's invalid lines.

Reward (joint). state score s_t = voxel.score_world of the world after turn t (in [-1, 1]);
invalid-line penalty p_t = min(INVALID_PENALTY_CAP, INVALID_LINE_PENALTY x invalid lines of
both agents at turn t).
    reward_mode="final" (default, sparse): r_t = 0 before the last turn; r_{T-1} = s_{T-1} - sum_t p_t
    reward_mode="delta": r_t = s_t - s_{t-1} - p_t, with s_{-1} = 0 (the empty world)
Both give the same undiscounted return: s_{T-1} - sum_t p_t, at most 1.0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collm_serve.tasks.base import Problem, Task, TaskEpisode, check_split
from collm_serve.tasks.voxel import (
    AIR,
    BLOCK_CHARS,
    MAX_COMMANDS_PER_TURN,
    Cell,
    VoxelWorld,
    parse_commands,
    render_layers,
    score_world,
)

DATA_PATH = Path(__file__).parent / "data" / "build_targets.json"
PALETTES: dict[str, tuple[str, ...]] = {
    "builder_a": ("red_wool", "white_wool"),
    "builder_b": ("blue_wool", "black_wool"),
}
INVALID_LINE_PENALTY = 0.02
INVALID_PENALTY_CAP = 0.2  # per turn, both agents together
CELLS_SHOWN = 12  # per list in the feedback
REWARD_MODES = ("final", "delta")


class BuildTask(Task):
    name = "build"

    def __init__(self, num_turns: int = 4, reward_mode: str = "final"):
        if num_turns < 1:
            raise ValueError(f"num_turns must be >= 1, got {num_turns}")
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {reward_mode!r}; valid: {', '.join(REWARD_MODES)}")
        self.agents = tuple(PALETTES)
        self.num_turns = num_turns
        self.reward_mode = reward_mode
        with open(DATA_PATH, encoding="utf-8") as f:
            doc = json.load(f)
        self.size: tuple[int, int, int] = tuple(doc["size"])
        self._problems: dict[str, list[Problem]] = {"train": [], "eval": []}
        for t in doc["targets"]:
            payload = {k: t[k] for k in ("name", "description", "cells")}
            payload["size"] = list(self.size)
            self._problems[check_split(t["split"])].append(Problem(f"build/{t['id']}", t["split"], payload))

    def problems(self, split: str) -> list[Problem]:
        return list(self._problems[check_split(split)])

    def new_episode(self, problem: Problem) -> BuildEpisode:
        return BuildEpisode(self, problem)


def _fmt_cells(cells, limit: int = CELLS_SHOWN) -> str:
    shown = " ".join(f"({x},{y},{z})" for x, y, z in list(cells)[:limit])
    return shown + (f" ... (+{len(cells) - limit} more)" if len(cells) > limit else "")


class BuildEpisode(TaskEpisode):
    task: BuildTask

    def __init__(self, task: BuildTask, problem: Problem):
        self.size: tuple[int, int, int] = tuple(problem.payload["size"])
        self.target: frozenset[Cell] = frozenset(tuple(c) for c in problem.payload["cells"])
        self.world = VoxelWorld(self.size)
        self._target_layers = 1 + max(y for _, y, _ in self.target)
        self.prev_score = 0.0
        self.total_penalty = 0.0
        super().__init__(task, problem)

    def _palette_text(self, agent: str) -> str:
        return ", ".join(f"{b} ({BLOCK_CHARS[b]})" for b in PALETTES[agent])

    def _initial_prompt(self, agent: str) -> str:
        partner = next(a for a in self.agents if a != agent)
        p = self.problem.payload
        target_map = render_layers(self.size, {c: "#" for c in self.target})
        sx, sy, sz = self.size
        return (
            f"You are {agent.upper()} in a two-builder team playing a voxel building game over "
            f"{self.num_turns} turns. Build the target shape together with {partner.upper()}.\n\n"
            f"World: x = 0..{sx - 1} (columns), y = 0..{sy - 1} (height, 0 = ground), "
            f"z = 0..{sz - 1} (rows).\n"
            f"Target: {p['name']} - {p['description']} ({len(self.target)} cells).\n"
            f"Target layers ('#' = must be filled):\n{target_map}\n\n"
            f"Your palette: {self._palette_text(agent)}. Your partner's palette: "
            f"{self._palette_text(partner)}. `{AIR}` removes a block.\n"
            "Scoring: fill every target cell; blocks outside the target, two face-adjacent blocks "
            "of the same type, and invalid lines are penalised.\n\n"
            f"Current world (empty):\n{self.world.render(self._target_layers)}\n\n"
            f"Reply with at most {MAX_COMMANDS_PER_TURN} commands, one per line: /setblock x y z block"
        )

    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        invalid = {}
        applied = {}
        for agent in self.agents:  # fixed order: builder_a, then builder_b
            commands, bad = parse_commands(joint_action[agent], frozenset(PALETTES[agent]), self.size)
            self.world.apply(commands)
            invalid[agent] = bad
            applied[agent] = len(commands)
        n_invalid = sum(len(v) for v in invalid.values())
        penalty = min(INVALID_PENALTY_CAP, INVALID_LINE_PENALTY * n_invalid)
        self.total_penalty += penalty
        score = score_world(self.world, self.target)
        last = self.is_last_turn
        if self.task.reward_mode == "delta":
            reward = score.score - self.prev_score - penalty
        else:
            reward = score.score - self.total_penalty if last else 0.0
        self.prev_score = score.score
        info = {
            "reward_mode": self.task.reward_mode,
            "state": score.to_dict(),
            "invalid_penalty": penalty,
            "total_invalid_penalty": self.total_penalty,
            "applied": applied,
            "invalid": {a: [{"line": b.line, "reason": b.reason} for b in v] for a, v in invalid.items()},
            "world": {f"{x},{y},{z}": b for (x, y, z), b in sorted(self.world.blocks.items())},
        }
        feedback = {a: self._feedback(a, score, invalid, last) for a in self.agents}
        return reward, feedback, info

    def _feedback(self, agent: str, score, invalid, last: bool) -> str:
        partner = next(a for a in self.agents if a != agent)
        lines = [
            f"Turn {self.turn + 1} of {self.num_turns} done. Score now {score.score:.3f} "
            f"(coverage {score.covered}/{score.target_size}, extra blocks {len(score.extra)}, "
            f"same-block adjacencies {len(score.same_adjacent)})."
        ]
        if score.missing:
            lines.append(f"Missing target cells ({len(score.missing)}): {_fmt_cells(score.missing)}")
        if score.extra:
            lines.append(
                f"Extra blocks outside the target ({len(score.extra)}): {_fmt_cells(score.extra)}"
                f" - remove them with `/setblock x y z {AIR}`"
            )
        if score.same_adjacent:
            pairs = " ".join(
                f"({a[0]},{a[1]},{a[2]})-({b[0]},{b[1]},{b[2]}) {self.world.blocks[a]}"
                for a, b in score.same_adjacent[:CELLS_SHOWN]
            )
            more = len(score.same_adjacent) - CELLS_SHOWN
            lines.append(f"Same-block adjacent pairs ({len(score.same_adjacent)}): {pairs}"
                         + (f" ... (+{more} more)" if more > 0 else ""))
        own = invalid[agent]
        if own:
            shown = "; ".join(f"{b.line[:60]!r}: {b.reason}" for b in own[:CELLS_SHOWN])
            lines.append(f"Your invalid lines ({len(own)}): {shown}")
        else:
            lines.append("Your invalid lines: none.")
        lines.append(f"Your partner's invalid lines: {len(invalid[partner])}.")
        if not last:
            lines.append(f"\nCurrent world:\n{self.world.render(self._target_layers)}\n")
            lines.append(
                f"Send more commands (your palette: {', '.join(PALETTES[agent])}; {AIR} removes a "
                "block), one per line: /setblock x y z block"
            )
        return "\n".join(lines)
