"""`housebuild` against hand-computed values from the paper's code (OpenMLRL/LLM_Collab_Minecraft
@9c2e006): score_house_builder's match ratio over the whole box, air included
(house_build/utils/house_builder.py:455-494), /fill validation with resource limits
(house_builder.py:58-155, 441-452), the spider penalty min(1, dmg/hp) * 0.1 unless /kill
(house_build/rewards/house_builder_reward.py:317-321), score feedback
(house_build/external/score_feedback.py:134-192), shift -1.0, early termination > 0.0.

House 0002 (6 x 7 x 7 = 294 cells): 122 air, 68 white_concrete, 12 obsidian, 36 stone_stairs,
54 stone_bricks, 2 planks. Layer y=0 is air at z=0 and z=6 and white_concrete at z=1..5 (30
cells). rpg_seed 0 draws the attacks [2, 2, 1]: damage 5 against 5 HP, penalty 0.1.
"""

from __future__ import annotations

import pytest

from collm_serve.tasks import get_task
from collm_serve.tasks.housebuild import spider_attacks
from collm_serve.tasks.minecraft import SYSTEM_PROMPT

TASK = get_task("housebuild")
H = TASK.get_problem("housebuild/house_build_0002")
FLOOR = "/fill 0 0 1 5 0 5 white_concrete"  # the 30 concrete cells of y=0


def play(a: str, b: str = "", task=TASK):
    return task.new_episode(H).step({"builder_a": a, "builder_b": b}, early_stop=False)


def test_data_splits_and_settings():
    assert len(TASK.problems("train")) == 8 and len(TASK.problems("eval")) == 2
    assert [p.payload["task_id"] for p in TASK.problems("eval")] == ["house_build_0108", "house_build_0109"]
    assert TASK.reward_shift == -1.0 and TASK.early_stop_threshold == 0.0 and TASK.num_turns == 4
    assert spider_attacks(0) == [2, 2, 1] and spider_attacks(3) == [1, 3, 3]
    ep = TASK.new_episode(H)
    assert ep.house.resource_limits == {  # ceil(n/2) + n//4
        "white_concrete": 51, "obsidian": 9, "stone_stairs": 27, "stone_bricks": 40, "planks": 1}


@pytest.mark.parametrize("a,b,raw", [
    # 1. nothing built: the 122 air cells match, the spiders bite
    ("", "", 122 / 294 - 0.1),
    # 2. the same with a /kill from Agent 2
    ("", "/kill", 122 / 294),
    # 3. the concrete floor: 30 more cells match
    (FLOOR, "", 152 / 294 - 0.1),
    # 4. plus 6 concrete cells where y=1, z=0 must stay air, and a /kill
    (FLOOR + "\n/fill 0 1 0 5 1 0 white_concrete", "/kill", 146 / 294),
    # 5. Agent 1's lines all refused (mode, out of the box, setblock, over its concrete limit);
    #    Agent 2's floor (minecraft: prefix dropped) counts
    ("/fill 0 0 1 5 0 5 white_concrete replace\n/fill 0 0 0 6 0 0 stone_bricks\n"
     "/setblock 0 0 0 obsidian\n/fill 0 0 0 5 6 6 white_concrete",
     "/fill 0 0 1 5 0 5 minecraft:white_concrete", 152 / 294 - 0.1),
    # 6. air fills are unlimited and change nothing on an empty world
    ("/fill 0 0 0 5 6 6 air", "/kill", 122 / 294),
])
def test_reward_by_hand(a, b, raw):
    r = play(a, b)
    assert r.info["raw_reward"] == pytest.approx(raw)
    assert r.reward == pytest.approx(raw - 1.0)


def test_resource_limit_is_per_agent_and_turn():
    r = play(FLOOR + "\n/fill 0 0 0 5 0 3 white_concrete", FLOOR)
    assert r.info["rejected"]["builder_a"] == [{
        "line": "/fill 0 0 0 5 0 3 white_concrete",
        "reason": "exceeds resource limit for white_concrete: 54>51"}]
    assert r.info["accepted"] == {"builder_a": 1, "builder_b": 1}
    assert r.info["raw_reward"] == pytest.approx(152 / 294 - 0.1)


def perfect_split(ep) -> dict[str, str]:
    """Every solid cell as a one-cell fill, each block's cells alternating between the agents
    (one agent alone could not: its limit is ~3/4 of each block)."""
    lines = {"builder_a": ["/kill"], "builder_b": []}
    seen: dict[str, int] = {}
    for (x, y, z), block in sorted(ep.house.expected.items()):
        if block != "air":
            agent = ("builder_a", "builder_b")[seen.get(block, 0) % 2]
            seen[block] = seen.get(block, 0) + 1
            lines[agent].append(f"/fill {x} {y} {z} {x} {y} {z} {block}")
    return {a: "\n".join(v) for a, v in lines.items()}


def test_perfect_house_and_the_strict_threshold():
    ep = TASK.new_episode(H)
    r = ep.step(perfect_split(ep))
    assert r.info["raw_reward"] == 1.0 and r.info["iou"] == 1.0 and r.reward == 0.0
    assert not r.done  # 0.0 is not above the actor-critic threshold 0.0: never stops early
    ep = get_task("housebuild", early_stop_threshold=-0.1).new_episode(H)  # the magrpo config
    r = ep.step(perfect_split(ep))
    assert r.done and r.info["early_stop"] and ep.turn == 1


def test_prompt_and_score_feedback():
    ep = TASK.new_episode(H)
    sys_msg, first = ep.observation("builder_a")
    assert sys_msg == {"role": "system", "content": SYSTEM_PROMPT}
    text = first["content"]
    assert text.startswith("You are Agent 1 in a 2-person Minecraft building team.")
    assert "\ny=0: {(0, 0, 1, 5, 0, 5 white_concrete)}\n" in text
    assert "- from: [0,0,0]\n- to:   [5,6,6]" in text
    assert "Spider attack list: [2, 2, 1], total damage dmg=5.0." in text
    assert text.endswith("Resource limits per agent (air unlimited):\n- white_concrete: 51\n"
                         "- obsidian: 9\n- stone_stairs: 27\n- stone_bricks: 40\n- planks: 1")
    r = ep.step({"builder_a": "", "builder_b": "hello"})
    fb = r.feedback["builder_b"]
    assert fb.startswith("Score feedback:\n- Turn: 2\n- Previous reward: 0.3150\n"  # 122/294 - 0.1
                         "- Do not output any text other than commands.\n\nYou are Agent 2 in")
    assert fb.endswith("Your previous commands:\nhello")
    assert ep.observation("builder_b") == [sys_msg, {"role": "user", "content": fb}]
