"""`toy`: a deliberately easy task for the trainer's learning tests.

Agents `helper` and `main`, 1 turn, a tiny prompt naming a word. Reward (in [0, 1]):

    r = mean over agents of max(0, 1 - len(response) / TOY_MAX_CHARS)

counted in characters: shorter responses score higher, an empty response scores 1, and
TOY_MAX_CHARS (64) characters or more score 0. A policy learns it by emitting end-of-turn early.
Observations: each agent sees only its own prompt.
"""

from __future__ import annotations

from typing import Any

from collm_serve.tasks.base import Problem, Task, TaskEpisode, check_split

TOY_MAX_CHARS = 64
TOY_WORDS_TRAIN = ("apple", "river", "cloud", "stone", "lamp", "garden", "violin", "harbor")
TOY_WORDS_EVAL = ("candle", "meadow", "anchor", "pepper")


def toy_agent_reward(response: str) -> float:
    return max(0.0, 1.0 - len(response) / TOY_MAX_CHARS)


class ToyTask(Task):
    name = "toy"

    def __init__(self) -> None:
        self.agents = ("helper", "main")
        self.num_turns = 1
        self._problems = {
            "train": [Problem(f"toy/{i}", "train", {"word": w}) for i, w in enumerate(TOY_WORDS_TRAIN)],
            "eval": [Problem(f"toy/eval-{i}", "eval", {"word": w}) for i, w in enumerate(TOY_WORDS_EVAL)],
        }

    def problems(self, split: str) -> list[Problem]:
        return list(self._problems[check_split(split)])

    def new_episode(self, problem: Problem) -> ToyEpisode:
        return ToyEpisode(self, problem)


class ToyEpisode(TaskEpisode):
    def _initial_prompt(self, agent: str) -> str:
        return f"Say one word about {self.problem.payload['word']}."

    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        per_agent = {a: toy_agent_reward(joint_action[a]) for a in self.agents}
        reward = sum(per_agent.values()) / len(per_agent)
        feedback = {
            a: f"Your response had {len(joint_action[a])} characters (score {per_agent[a]:.3f})."
            for a in self.agents
        }
        info = {
            "per_agent": per_agent,
            "lengths": {a: len(joint_action[a]) for a in self.agents},
        }
        return reward, feedback, info
