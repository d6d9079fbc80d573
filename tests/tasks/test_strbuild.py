"""`strbuild` against hand-computed values from the paper's code (OpenMLRL/LLM_Collab_Minecraft
@9c2e006): score_str_builder (str_build/utils/str_builder.py:399-492: 2*coverage - 1.5*extra
- 1.0*adjacency - 0.25*missing palettes), command validation (str_builder.py:58-117), the font
(str_builder.py:158-205), position feedback (str_build/external/position_feedback.py:18-117),
reward shift -2.0 and early termination > -0.1 (str_build/configs/str_build_maac_config.yaml)."""

from __future__ import annotations

import pytest

from collm_serve.tasks import get_task
from collm_serve.tasks.minecraft import SYSTEM_PROMPT
from collm_serve.tasks.strbuild import load_font, render_rows

TASK = get_task("strbuild")
I = TASK.get_problem("strbuild/str_build_0001")  # the letter I: 13 target cells in a 5x5 box
EMPTY = {"builder_a": "", "builder_b": ""}
# Target of "I" (x, y): top row y=4 and bottom row y=0 full, the stem x=2 at y=1..3.
# Checkerboard by x+y parity: no two touching cells share a texture, all four blocks used.
EVEN = [(0, 4), (2, 4), (4, 4), (2, 2), (0, 0), (2, 0), (4, 0)]
ODD = [(1, 4), (3, 4), (2, 3), (2, 1), (1, 0), (3, 0)]


def setblocks(cells, blocks) -> str:
    return "\n".join(f"/setblock {x} {y} 0 {blocks[i % len(blocks)]}" for i, (x, y) in enumerate(cells))


def play(actions, task=TASK, problem=I):
    return task.new_episode(problem).step(actions, early_stop=False)


def test_font_renders_a_known_string():
    assert render_rows("li", load_font()) == [  # L, 2 empty columns, I
        "#......#####",
        "#........#..",
        "#........#..",
        "#........#..",
        "#####..#####",
    ]
    assert render_rows("A?", load_font(), spacing=1)[0] == ".###......."  # unknown: blank glyph
    assert TASK.get_problem("strbuild/str_build_0007").payload["rows"] == render_rows("LI", load_font())


def test_data_and_splits_are_the_papers():
    train = [p.payload["string"] for p in TASK.problems("train")]
    evl = [p.payload["string"] for p in TASK.problems("eval")]
    assert train == ["I", "C", "M", "L", "MC", "CM", "LI", "LLM"] and evl == ["ICML", "CLIM"]
    assert TASK.num_turns == 4 and TASK.reward_shift == -2.0 and TASK.early_stop_threshold == -0.1


@pytest.mark.parametrize("actions,raw,terms", [
    # 1. nothing placed: only the two missing palettes count
    (EMPTY, -0.5, {"coverage": 0.0, "extra": 0.0, "adjacency": 0.0, "missing_palette": -0.5}),
    # 2. the perfect I: full coverage, 12 adjacent pairs none alike, both palettes present
    ({"builder_a": setblocks(EVEN, ["oak_planks", "stone"]),
      "builder_b": setblocks(ODD, ["white_concrete", "obsidian"])},
     2.0, {"coverage": 2.0, "extra": 0.0, "adjacency": 0.0, "missing_palette": 0.0}),
    # 3. the I all in stone by one agent: 12/12 pairs alike, both palettes incomplete
    ({"builder_a": setblocks(EVEN + ODD, ["stone"]), "builder_b": ""},
     0.5, {"coverage": 2.0, "extra": 0.0, "adjacency": -1.0, "missing_palette": -0.5}),
    # 4. the whole 5x5 box in oak: 12/12 background cells extra, 40/40 pairs alike
    ({"builder_a": setblocks([(x, y) for x in range(5) for y in range(5)], ["oak_planks"]),
      "builder_b": ""}, -1.0,
     {"coverage": 2.0, "extra": -1.5, "adjacency": -1.0, "missing_palette": -0.5}),
    # 5. Agent 2 overwrites (1,4) and removes (0,4) with air; (1,1) is off the target; Agent 1's
    #    out-of-box, relative and off-palette lines are refused: 2/13 - 1.5/12 - 0.25 = -23/104
    ({"builder_a": "/setblock 0 4 0 stone\n/setblock 1 4 0 stone\n/setblock 9 9 0 stone\n"
                   "/setblock ~ 0 0 stone\n/setblock 2 4 0 obsidian",
      "builder_b": "/setblock 1 4 0 obsidian\n/setblock 0 4 0 air\n/setblock 1 1 0 white_concrete"},
     -23 / 104, {"coverage": 2 / 13, "extra": -0.125, "adjacency": 0.0, "missing_palette": -0.25}),
    # 6. only the first fenced block is read (list markers and minecraft: dropped): 2 cells,
    #    one pair of different textures, Agent 2's palette missing: 4/13 - 0.25 = 3/52
    ({"builder_a": "Sure!\n```mcfunction\n- /setblock 0 0 0 minecraft:oak_planks\n"
                   "1. setblock 1 0 0 stone\n```\n/setblock 2 0 0 stone",
      "builder_b": ""}, 3 / 52,
     {"coverage": 4 / 13, "extra": 0.0, "adjacency": 0.0, "missing_palette": -0.25}),
])
def test_reward_by_hand(actions, raw, terms):
    r = play(actions)
    assert r.info["raw_reward"] == pytest.approx(raw)
    assert r.reward == pytest.approx(raw - 2.0)  # the shift, applied once
    assert r.info["terms"] == pytest.approx(terms)


def test_rejected_lines_and_budget():
    r = play({"builder_a": "/setblock 9 9 0 stone\n/setblock ~ 0 0 stone\n/setblock 2 4 0 obsidian\n"
                           "/fill 0 0 0 1 1 0 stone\n/setblock 1 1",
              "builder_b": "\n".join(["/setblock 0 0 0 obsidian"] * 151)})
    reasons = [x["reason"] for x in r.info["rejected"]["builder_a"]]
    assert reasons == ["setblock coord out of bbox", "setblock coords must be absolute integers (no ~)",
                       "block not allowed: obsidian", "unsupported command: fill",
                       "setblock needs: /setblock x y z block"]
    assert r.info["accepted"] == {"builder_a": 0, "builder_b": 150}  # 300 split evenly
    assert r.info["rejected"]["builder_b"] == [{"line": "/setblock 0 0 0 obsidian",
                                                "reason": "exceeds max_commands=150"}]


def test_each_turn_is_scored_on_its_own_commands():
    ep = TASK.new_episode(I)
    perfect = {"builder_a": setblocks(EVEN, ["oak_planks", "stone"]), "builder_b": ""}
    r0 = ep.step(perfect, early_stop=False)
    r1 = ep.step(EMPTY, early_stop=False)  # the world does not carry over
    assert r0.info["covered"] == 7 and r1.info["covered"] == 0 and r1.info["raw_reward"] == -0.5


def test_position_feedback_content():
    ep = TASK.new_episode(I)
    r = ep.step({"builder_a": "  /setblock 0 4 0 stone \n", "builder_b": ""})
    fb = r.feedback["builder_a"]
    assert fb.startswith(
        "Position feedback (subset selection):\n- Turn: 2\n- Coordinates are absolute (x, y, z).\n"
        "- Output /setblock commands only (no markdown).\n"
        "- Choose a subset of about half the positions (target size ~ 6).\n"
        "- Try to avoid selecting any 4-connected adjacent pairs (sharing a side) within your subset.\n"
        "- Max commands allowed: 150\n\nAll letter positions:\n"
        "- (0, 4, 0)\n- (1, 4, 0)\n- (2, 4, 0)\n- (3, 4, 0)\n- (4, 4, 0)\n- (2, 3, 0)\n- (2, 2, 0)\n"
        "- (2, 1, 0)\n- (0, 0, 0)\n- (1, 0, 0)\n- (2, 0, 0)\n- (3, 0, 0)\n- (4, 0, 0)\n\n"
        "Available blocks (use ONLY these):\n- oak_planks\n- stone\n- air\n\n"
        "Format: /setblock <x> <y> <z> <block>\n\nYou are Agent 1 in a 2-person")
    assert fb.endswith("Your previous commands:\n/setblock 0 4 0 stone")
    # Agent 2 sent nothing: no previous-commands section; its own palette
    assert "Your previous commands" not in r.feedback["builder_b"]
    assert "- white_concrete\n- obsidian\n- air" in r.feedback["builder_b"]
    # the next observation is the paper's next prompt, not a growing chat
    assert ep.observation("builder_a") == [{"role": "system", "content": SYSTEM_PROMPT},
                                           {"role": "user", "content": fb}]


def test_first_prompt_hides_the_grid_as_the_papers_configs_do():
    obs = TASK.new_episode(I).observation("builder_b")
    assert obs[0] == {"role": "system", "content": SYSTEM_PROMPT}
    text = obs[1]["content"]
    assert text.startswith("You are Agent 2 in a 2-person Minecraft building team. You will place "
                           "SOME of the blocks for the final build.\nYou write after Agent 1, so "
                           "your /setblock commands overwrite Agent 1's results.\n\n\n\nWORLD bbox")
    assert "- from: [0,0,0]\n- to:   [4,4,0]" in text and "#" not in text
    shown = get_task("strbuild", provide_graph=True).new_episode(I).observation("builder_b")[1]["content"]
    assert "Target grid (top-down rows):\n#####\n..#..\n..#..\n..#..\n#####\n" in shown


def test_perfect_turn_stops_the_episode_early():
    ep = TASK.new_episode(I)
    r = ep.step({"builder_a": setblocks(EVEN, ["oak_planks", "stone"]),
                 "builder_b": setblocks(ODD, ["white_concrete", "obsidian"])})
    assert r.reward == 0.0 and r.done and r.info["early_stop"] and ep.done and ep.turn == 1
    # the all-stone I (raw 0.5, shifted -1.5) plays on
    ep = TASK.new_episode(I)
    r = ep.step({"builder_a": setblocks(EVEN + ODD, ["stone"]), "builder_b": ""})
    assert r.reward == -1.5 and not r.done and not r.info["early_stop"]
    # strictly above: a shifted 0.0 against a threshold of 0.0 does not stop
    ep = get_task("strbuild", early_stop_threshold=0.0).new_episode(I)
    r = ep.step({"builder_a": setblocks(EVEN, ["oak_planks", "stone"]),
                 "builder_b": setblocks(ODD, ["white_concrete", "obsidian"])})
    assert r.reward == 0.0 and not r.done
    # no early stop at all
    ep = get_task("strbuild", early_stop_threshold=None, num_turns=2).new_episode(I)
    assert not ep.step({"builder_a": setblocks(EVEN, ["oak_planks", "stone"]),
                        "builder_b": setblocks(ODD, ["white_concrete", "obsidian"])}).done


def test_a_minecraft_task_missing_its_constants_fails_where_it_is_defined():
    """`MinecraftTask.__init_subclass__`: palettes, max_commands and read_turn are class-statement
    arguments, so a task that forgets one (or gives no agent a command) fails at definition."""
    from collm_serve.tasks.minecraft import MinecraftTask
    from collm_serve.tasks.strbuild import PALETTES, parse_setblocks

    with pytest.raises(TypeError, match="max_commands"):
        class NoBudget(MinecraftTask, palettes=PALETTES, read_turn=parse_setblocks):  # noqa: F841
            name = "nobudget"
    with pytest.raises(ValueError, match="at least one command"):
        class TooSmall(MinecraftTask, palettes=PALETTES, max_commands=1,  # noqa: F841
                       read_turn=parse_setblocks):
            name = "toosmall"

    class Fine(MinecraftTask, palettes=PALETTES, max_commands=4, read_turn=parse_setblocks):
        name = "fine"

    assert Fine.palettes is PALETTES and Fine.max_commands == 4
    assert Fine.read_turn is parse_setblocks  # a plain function again: no `self` is bound to it
