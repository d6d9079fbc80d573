"""A tiny voxel world for the build game (after the paper's Minecraft StrBuild, offline).

Coordinates are (x, y, z) with y the height (0 = ground), each in [0, size). A world maps cells
to block names. Agents write Minecraft-style lines `/setblock x y z block` (an optional
`minecraft:` prefix is accepted; `air` removes a block and is in every palette).

Parsing a response: only lines containing `/setblock` are commands (prose, code fences, list
bullets and backticks around a command are ignored). A command line is invalid when it is
malformed, out of bounds, names an unknown block, a block outside the agent's palette, or comes
after the first MAX_COMMANDS_PER_TURN commands. Invalid lines change nothing; a coordinate
too long for `int` is out of bounds (parsing never raises on model text).

Scoring a world against a target (a set of cells that must be filled):
    coverage  = |filled & target| / |target|
    extra     = |filled - target|
    same_adj  = number of face-adjacent pairs of filled cells holding the same block
    score     = coverage - EXTRA_PENALTY * extra / |target| - ADJACENCY_PENALTY * same_adj / |target|
floored at SCORE_FLOOR; 1.0 = the target exactly, with no two touching blocks alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Cell = tuple[int, int, int]

AIR = "air"
BLOCK_CHARS: dict[str, str] = {
    "red_wool": "R",
    "white_wool": "W",
    "blue_wool": "B",
    "black_wool": "K",
}
KNOWN_BLOCKS = frozenset(BLOCK_CHARS) | {AIR}
MAX_COMMANDS_PER_TURN = 64
EXTRA_PENALTY = 0.5
ADJACENCY_PENALTY = 0.5
SCORE_FLOOR = -1.0

_CMD = re.compile(
    r"^/setblock\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+(?:minecraft:)?([A-Za-z_]+)\s*$"
)
_NEIGHBOURS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))  # +x, +y, +z: each pair counted once


@dataclass(frozen=True)
class Command:
    cell: Cell
    block: str  # a KNOWN_BLOCKS name ("air" removes)


@dataclass(frozen=True)
class InvalidLine:
    line: str
    reason: str  # malformed | out_of_bounds | unknown_block | off_palette | over_limit


def _cell(m: re.Match[str]) -> Cell | None:
    """The command's coordinates, or None when one is too long for `int` (over 4300 digits
    raises ValueError since Python 3.11): such a number is out of bounds, not a crash."""
    try:
        return (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def parse_commands(
    text: str, palette: frozenset[str], size: tuple[int, int, int],
    max_commands: int = MAX_COMMANDS_PER_TURN,
) -> tuple[list[Command], list[InvalidLine]]:
    """Valid commands (in order) and invalid command lines of one response."""
    commands: list[Command] = []
    invalid: list[InvalidLine] = []
    seen = 0
    for raw in text.splitlines():
        i = raw.find("/setblock")
        if i < 0:
            continue
        line = raw[i:].strip().rstrip("`").strip()
        seen += 1
        if seen > max_commands:
            invalid.append(InvalidLine(line, "over_limit"))
            continue
        m = _CMD.match(line)
        if not m:
            invalid.append(InvalidLine(line, "malformed"))
            continue
        cell = _cell(m)
        block = m.group(4).lower()
        if cell is None or not all(0 <= c < s for c, s in zip(cell, size)):
            invalid.append(InvalidLine(line, "out_of_bounds"))
        elif block not in KNOWN_BLOCKS:
            invalid.append(InvalidLine(line, "unknown_block"))
        elif block != AIR and block not in palette:
            invalid.append(InvalidLine(line, "off_palette"))
        else:
            commands.append(Command(cell, block))
    return commands, invalid


@dataclass
class VoxelWorld:
    size: tuple[int, int, int] = (5, 5, 5)
    blocks: dict[Cell, str] = field(default_factory=dict)

    def apply(self, commands: list[Command]) -> None:
        for c in commands:
            if c.block == AIR:
                self.blocks.pop(c.cell, None)
            else:
                self.blocks[c.cell] = c.block

    def copy(self) -> VoxelWorld:
        return VoxelWorld(self.size, dict(self.blocks))

    def render(self, min_layers: int = 1) -> str:
        """Layer maps (see `render_layers`) of at least `min_layers` layers."""
        return render_layers(self.size, {c: BLOCK_CHARS[b] for c, b in self.blocks.items()}, min_layers)


def render_layers(size: tuple[int, int, int], chars: dict[Cell, str], min_layers: int = 1) -> str:
    """Text layer maps, y = 0 first, up to the highest non-empty layer (at least `min_layers`);
    rows are z, columns x, '.' is empty."""
    sx, sy, sz = size
    top = max([y for _, y, _ in chars] + [min_layers - 1, 0])
    out = []
    for y in range(min(top + 1, sy)):
        out.append(f"y={y}" + (" (ground)" if y == 0 else ""))
        out.append("    x=" + "".join(str(x % 10) for x in range(sx)))
        for z in range(sz):
            out.append(f"  z={z} " + "".join(chars.get((x, y, z), ".") for x in range(sx)))
    if top + 1 < sy:
        out.append(f"(layers y={top + 1}..{sy - 1} are empty)")
    return "\n".join(out)


@dataclass(frozen=True)
class BuildScore:
    covered: int
    target_size: int
    missing: tuple[Cell, ...]  # sorted
    extra: tuple[Cell, ...]  # sorted
    same_adjacent: tuple[tuple[Cell, Cell], ...]  # sorted pairs (a < b)
    coverage: float
    score: float

    def to_dict(self) -> dict:
        return {
            "covered": self.covered,
            "target_size": self.target_size,
            "coverage": self.coverage,
            "missing": [list(c) for c in self.missing],
            "extra": [list(c) for c in self.extra],
            "same_adjacent": [[list(a), list(b)] for a, b in self.same_adjacent],
            "score": self.score,
        }


def score_world(world: VoxelWorld, target: frozenset[Cell]) -> BuildScore:
    if not target:
        raise ValueError("target must have at least one cell")
    filled = set(world.blocks)
    covered = len(filled & target)
    missing = tuple(sorted(target - filled))
    extra = tuple(sorted(filled - target))
    pairs = []
    for (x, y, z), block in world.blocks.items():
        for dx, dy, dz in _NEIGHBOURS:
            other = (x + dx, y + dy, z + dz)
            if world.blocks.get(other) == block:
                pairs.append(((x, y, z), other))
    pairs.sort()
    coverage = covered / len(target)
    score = coverage - EXTRA_PENALTY * len(extra) / len(target) - ADJACENCY_PENALTY * len(pairs) / len(target)
    return BuildScore(covered, len(target), missing, extra, tuple(pairs), coverage, max(SCORE_FLOOR, score))
