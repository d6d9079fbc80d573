"""`tally`: two agents build a running total toward a target, one number each per turn.

Why this task exists (issue 28, item 3): the paper's claim (CoLLM-CC beats Monte Carlo on long
horizons) needs a test in the paper's mould that SmolLM2-135M-Instruct can actually play on a
CPU: a textual state, textual per-turn feedback that carries the last score, per-turn rewards,
short observations and short answers (histories of a few hundred tokens, because the update's
forward + backward over every history is the cost). Its one skill is small-number arithmetic
and a convention between two agents, which a 135M model has some grip on, so its base return
varies (docs/sample-efficiency.md records the pilot).

The game. An instance is (start, target). Each turn each agent answers one number 0-9 (the
first integer in its answer; no integer, or one above 9, adds 0); the team total grows by both
numbers. The total never goes down, so an overshoot is permanent. The build's quality is

    progress(total) = max(0, 1 - |target - total| / (target - start))

(0 at the start, 1 on the target, 0 again once the overshoot equals the gap).

Variants (`variant=`):
  long    4 turns, reward each turn = progress after that turn. The total persists, so a good
          early move pays at every later turn and an early overshoot costs every later turn:
          the return compounds over turns. Gap target - start in 16..56, never reachable in one
          turn (a joint move adds at most 18).
  short   1 turn, dense graded reward = progress after the turn; gap 2..18 (reachable).
  sparse  the long instances and horizon, reward 0 until the last turn, then the final
          progress (the same game with the per-turn signal removed).

`best_return(problem)` is the best achievable return of an instance (the long variant's optimum
adds 18 per turn until the target is within reach), so a runner can normalise returns to [0, 1].

Observations: each agent sees its own chat history. Feedback is the team's move (the sum, and
the agent's own number), the new total, the target and the turn's score; the partner's raw
answer never appears (its number can be inferred from the sum, as in the paper's build tasks,
where the built state shows every agent's work).

Split: instances are all (start, gap) pairs of the variant's ranges; an instance is in `eval`
when (7*start + 3*gap) % 5 == 0 (about a fifth), else in `train`: disjoint by construction and
fixed (no randomness), the same for every seed.
"""

from __future__ import annotations

import re
from typing import Any

from collm_serve.tasks.base import Problem, Task, TaskEpisode, check_split

VARIANTS = ("long", "short", "sparse")
MAX_MOVE = 9  # per agent per turn
_INT = re.compile(r"-?\d+")
# (turns, start range, gap range) per variant; sparse shares long's instances
_SHAPE = {
    "long": (4, range(0, 10), range(16, 57)),
    "short": (1, range(0, 31), range(2, 19)),
    "sparse": (4, range(0, 10), range(16, 57)),
}


def parse_move(text: str) -> int:
    """The number an answer adds: its first integer if 0..MAX_MOVE, else 0 (a wasted move).

    The first integer, not the last, because a short answer states its number first; a model
    that rambles ("5. Then 9 next round") is held to what it said first."""
    m = _INT.search(text)
    if m is None:
        return 0
    digits = m.group().lstrip("-").lstrip("0") or "0"
    if len(digits) > len(str(MAX_MOVE)):  # out of range; and int() refuses > 4300 digits (model text)
        return 0
    v = int(m.group())
    return v if 0 <= v <= MAX_MOVE else 0


def progress(total: int, start: int, target: int) -> float:
    """How close the build is: 0 at the start, 1 on the target, down to 0 past it."""
    return max(0.0, 1.0 - abs(target - total) / (target - start))


def best_return(problem: Problem) -> float:
    """The best achievable return of `problem` (sum of per-turn rewards), for normalisation."""
    p = problem.payload
    start, target, turns, variant = p["start"], p["target"], p["turns"], p["variant"]
    total, rewards = start, []
    for _ in range(turns):
        total = min(total + 2 * MAX_MOVE, target)
        rewards.append(progress(total, start, target))
    return rewards[-1] if variant == "sparse" else sum(rewards)


def _is_eval(start: int, gap: int) -> bool:
    return (7 * start + 3 * gap) % 5 == 0


class TallyTask(Task):
    name = "tally"

    def __init__(self, variant: str = "long") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown tally variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.variant = variant
        self.agents = ("alice", "bob")
        turns, starts, gaps = _SHAPE[variant]
        self.num_turns = turns
        self._problems: dict[str, list[Problem]] = {"train": [], "eval": []}
        for s in starts:
            for g in gaps:
                split = "eval" if _is_eval(s, g) else "train"
                payload = {"start": s, "target": s + g, "turns": turns, "variant": variant}
                self._problems[split].append(Problem(f"tally/{variant}/s{s}-t{s + g}", split, payload))

    def problems(self, split: str) -> list[Problem]:
        return list(self._problems[check_split(split)])

    def new_episode(self, problem: Problem) -> TallyEpisode:
        return TallyEpisode(self, problem)


class TallyEpisode(TaskEpisode):
    def __init__(self, task: TallyTask, problem: Problem):
        self.total = int(problem.payload["start"])
        super().__init__(task, problem)

    def _initial_prompt(self, agent: str) -> str:
        p = self.problem.payload
        rounds = "1 round" if p["turns"] == 1 else f"{p['turns']} rounds"
        when = ("You are scored after the last round." if p["variant"] == "sparse"
                else "You are scored every round on how close the total is to the target.")
        return (f"Team game with a partner, {rounds}. Each round you and your partner each add a "
                f"number from 0 to 9 to a shared total. Reach the target exactly; going over is "
                f"bad and the total never goes down. {when}\n"
                f"Total: {self.total}. Target: {p['target']}.\n"
                f"Round 1: reply with one number from 0 to 9.")

    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        p = self.problem.payload
        moves = {a: parse_move(joint_action[a]) for a in self.agents}
        added = sum(moves.values())
        self.total += added
        prog = progress(self.total, p["start"], p["target"])
        last = self.is_last_turn
        reward = prog if (p["variant"] != "sparse" or last) else 0.0
        nxt = self.turn + 2
        feedback = {
            a: (f"Round {self.turn + 1}: you added {moves[a]}, the team added {added}. "
                f"Total: {self.total}. Target: {p['target']}. Score this round: {reward:.2f}."
                + ("" if last else f"\nRound {nxt}: reply with one number from 0 to 9."))
            for a in self.agents
        }
        info = {"moves": moves, "total": self.total, "progress": prog}
        return reward, feedback, info


__all__ = ["VARIANTS", "TallyEpisode", "TallyTask", "best_return", "parse_move", "progress"]
