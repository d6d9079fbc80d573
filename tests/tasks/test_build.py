from __future__ import annotations

import pytest

from collm_serve.tasks import get_task
from collm_serve.tasks.build import INVALID_LINE_PENALTY, INVALID_PENALTY_CAP, PALETTES
from collm_serve.tasks.voxel import (
    ADJACENCY_PENALTY,
    EXTRA_PENALTY,
    Command,
    VoxelWorld,
    parse_commands,
    score_world,
)

A_PAL = frozenset(PALETTES["builder_a"])


def perfect_actions(cells):
    """Parity colouring: no two face-adjacent cells share a block; a builds even, b odd cells."""
    a = [f"/setblock {x} {y} {z} red_wool" for x, y, z in cells if (x + y + z) % 2 == 0]
    b = [f"/setblock {x} {y} {z} blue_wool" for x, y, z in cells if (x + y + z) % 2 == 1]
    return {"builder_a": "\n".join(a), "builder_b": "\n".join(b)}


def episode(target_id="wall_3x3", **opts):
    task = get_task("build", **opts)
    return task.new_episode(task.get_problem(f"build/{target_id}"))


EMPTY = {"builder_a": "", "builder_b": ""}
# Turn 0 of the "partial" game on wall_3x3 (9 cells at x=1..3, y=0..2, z=2):
#   a: two touching red blocks (one same-block pair) + one out-of-bounds line
#   b: one target cell + one block outside the target
PARTIAL_0 = {
    "builder_a": "Here is my plan:\n/setblock 1 0 2 red_wool\n/setblock 2 0 2 red_wool\n/setblock 5 0 0 red_wool",
    "builder_b": "```\n/setblock 3 0 2 blue_wool\n/setblock 4 4 4 black_wool\n```",
}
# Turn 1: a replaces the middle block with white (no same pair left), b removes its extra block.
PARTIAL_1 = {"builder_a": "/setblock 2 0 2 white_wool", "builder_b": "/setblock 4 4 4 air"}


def test_perfect_build_scores_one_in_both_modes():
    task = get_task("build")
    for p in task.problems("train") + task.problems("eval"):
        ep = task.new_episode(p)
        rewards = [ep.step(perfect_actions(p.payload["cells"])).reward]
        rewards += [ep.step(EMPTY).reward for _ in range(3)]
        assert rewards == [0.0, 0.0, 0.0, 1.0], p.problem_id
    ep = episode(reward_mode="delta")
    rewards = [ep.step(perfect_actions(ep.problem.payload["cells"])).reward]
    rewards += [ep.step(EMPTY).reward for _ in range(3)]
    assert rewards == [1.0, 0.0, 0.0, 0.0]


def test_partial_game_exact_rewards_delta():
    ep = episode(reward_mode="delta")
    r0 = ep.step(PARTIAL_0)
    s0 = 3 / 9 - EXTRA_PENALTY * 1 / 9 - ADJACENCY_PENALTY * 1 / 9  # = 2/9
    assert r0.info["state"]["score"] == pytest.approx(2 / 9)
    assert r0.reward == pytest.approx(s0 - INVALID_LINE_PENALTY)
    assert r0.info["state"]["covered"] == 3
    assert r0.info["state"]["extra"] == [[4, 4, 4]]
    assert r0.info["state"]["same_adjacent"] == [[[1, 0, 2], [2, 0, 2]]]
    assert r0.info["invalid"]["builder_a"] == [{"line": "/setblock 5 0 0 red_wool", "reason": "out_of_bounds"}]
    assert r0.info["applied"] == {"builder_a": 2, "builder_b": 2}
    r1 = ep.step(PARTIAL_1)
    assert r1.info["state"]["score"] == pytest.approx(3 / 9)
    assert r1.reward == pytest.approx(3 / 9 - 2 / 9)
    assert r1.info["world"] == {"1,0,2": "red_wool", "2,0,2": "white_wool", "3,0,2": "blue_wool"}
    r2 = ep.step(EMPTY)
    r3 = ep.step(EMPTY)
    assert (r2.reward, r3.reward) == (0.0, 0.0)
    assert sum(r.reward for r in (r0, r1, r2, r3)) == pytest.approx(3 / 9 - 0.02)


def test_partial_game_exact_rewards_final():
    ep = episode()
    rewards = [ep.step(a).reward for a in (PARTIAL_0, PARTIAL_1, EMPTY, EMPTY)]
    assert rewards[:3] == [0.0, 0.0, 0.0]
    assert rewards[3] == pytest.approx(3 / 9 - 0.02)


def test_invalid_lines_each_reason_and_cap():
    lines = [
        "/setblock 1 0 red_wool",  # malformed
        "/setblock 1 0 2 gold_block",  # unknown_block
        "/setblock 1 0 2 blue_wool",  # off_palette for builder_a
        "/setblock 1 -1 2 red_wool",  # out_of_bounds
        "/setblock 1 0 2 red_wool[color=red]",  # malformed
        "some prose mentioning nothing",  # ignored
    ]
    cmds, bad = parse_commands("\n".join(lines), A_PAL, (5, 5, 5))
    assert cmds == []
    assert [b.reason for b in bad] == ["malformed", "unknown_block", "off_palette", "out_of_bounds", "malformed"]
    many = "\n".join(f"/setblock {i % 5} 0 0 red_wool" for i in range(70))
    cmds, bad = parse_commands(many, A_PAL, (5, 5, 5))
    assert len(cmds) == 64 and [b.reason for b in bad] == ["over_limit"] * 6
    # minecraft: prefix, list bullets and backticks are accepted
    cmds, bad = parse_commands("1. `/setblock 0 0 0 minecraft:white_wool`\n- /setblock 1 0 0 AIR", A_PAL, (5, 5, 5))
    assert cmds == [Command((0, 0, 0), "white_wool"), Command((1, 0, 0), "air")] and bad == []
    # reward: 12 invalid lines -> penalty capped at 0.2
    ep = episode(reward_mode="delta")
    r = ep.step({"builder_a": "\n".join(["/setblock 9 9 9 red_wool"] * 12), "builder_b": ""})
    assert r.info["invalid_penalty"] == INVALID_PENALTY_CAP == 0.2
    assert r.reward == pytest.approx(-0.2)


def test_palette_and_order():
    ep = episode(reward_mode="delta")
    r = ep.step({"builder_a": "/setblock 1 0 2 red_wool", "builder_b": "/setblock 1 0 2 black_wool\n/setblock 2 0 2 red_wool"})
    # b's red_wool is off-palette; b's black_wool overwrites a's red (a applied first)
    assert r.info["world"] == {"1,0,2": "black_wool"}
    assert r.info["invalid"]["builder_b"] == [{"line": "/setblock 2 0 2 red_wool", "reason": "off_palette"}]


def test_feedback_content_and_observation():
    ep = episode(reward_mode="delta")
    r = ep.step(PARTIAL_0)
    fa, fb = r.feedback["builder_a"], r.feedback["builder_b"]
    assert fa.startswith("Turn 1 of 4 done. Score now 0.222 (coverage 3/9, extra blocks 1, same-block adjacencies 1).")
    assert "Missing target cells (6): (1,1,2) (1,2,2) (2,1,2) (2,2,2) (3,1,2) (3,2,2)" in fa
    assert "Extra blocks outside the target (1): (4,4,4)" in fa
    assert "Same-block adjacent pairs (1): (1,0,2)-(2,0,2) red_wool" in fa
    assert "Your invalid lines (1): '/setblock 5 0 0 red_wool': out_of_bounds" in fa
    assert "Your partner's invalid lines: 0." in fa
    assert "Your invalid lines: none." in fb and "Your partner's invalid lines: 1." in fb
    assert "/setblock 5 0 0" not in fb  # the partner's raw lines are not quoted
    assert "  z=2 .RRB." in fa  # current world, y=0
    obs_b = ep.observation("builder_b")
    assert [m["role"] for m in obs_b] == ["user", "assistant", "user"]
    assert obs_b[1]["content"] == PARTIAL_0["builder_b"]
    assert "Here is my plan" not in "\n".join(m["content"] for m in obs_b)
    first = ep.observation("builder_a")[0]["content"]
    assert "Your palette: red_wool (R), white_wool (W)." in first
    assert "  z=2 .###." in first and "(layers y=3..4 are empty)" in first


def test_feedback_truncates_long_lists():
    ep = episode("tower_4", reward_mode="delta")
    extra = "\n".join(f"/setblock {x} 4 {z} red_wool" for x in range(5) for z in range(4))  # 20 blocks
    r = ep.step({"builder_a": extra, "builder_b": ""})
    assert "Extra blocks outside the target (20):" in r.feedback["builder_a"]
    assert "... (+8 more)" in r.feedback["builder_a"]
    assert r.info["state"]["score"] == -1.0  # floored: 0 - 0.5*20/4 - 0.5*31/4 < -1


def test_score_world_formula():
    target = frozenset({(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)})
    w = VoxelWorld((5, 5, 5))
    w.apply([Command((0, 0, 0), "red_wool"), Command((1, 0, 0), "red_wool"), Command((2, 0, 0), "blue_wool"),
             Command((0, 1, 0), "red_wool")])
    s = score_world(w, target)
    assert s.covered == 3 and s.missing == ((3, 0, 0),) and s.extra == ((0, 1, 0),)
    assert s.same_adjacent == (((0, 0, 0), (0, 1, 0)), ((0, 0, 0), (1, 0, 0)))
    assert s.score == pytest.approx(3 / 4 - 0.5 * 1 / 4 - 0.5 * 2 / 4)
    w.apply([Command((0, 1, 0), "air"), Command((4, 4, 4), "air")])  # removing nothing is fine
    assert (0, 1, 0) not in w.blocks
    with pytest.raises(ValueError):
        score_world(w, frozenset())


def test_clone_keeps_worlds_apart():
    ep = episode(reward_mode="delta")
    ep.step(PARTIAL_0)
    twin = ep.clone()
    assert twin.world is not ep.world and twin.world.blocks == ep.world.blocks
    twin.step({"builder_a": "/setblock 1 1 2 white_wool", "builder_b": ""})
    ep.step(EMPTY)
    assert (1, 1, 2) in twin.world.blocks and (1, 1, 2) not in ep.world.blocks
    assert twin.prev_score != ep.prev_score


def test_targets_fit_and_splits():
    task = get_task("build")
    assert len(task.problems("train")) >= 6 and len(task.problems("eval")) >= 3
    for p in task.problems("train") + task.problems("eval"):
        cells = [tuple(c) for c in p.payload["cells"]]
        assert cells and len(set(cells)) == len(cells)
        assert all(0 <= v < 5 for c in cells for v in c)
