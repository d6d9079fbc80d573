"""The task interface: a dataset of problems, and per-problem episodes that format each agent's
observation, take one joint action per turn and return the joint reward and per-agent feedback.

Protocol shared by every task (each task documents its own prompts and reward levels):

- `Task.problems(split)` lists the problems of "train" or "eval" in a fixed order.
- `Task.new_episode(problem)` starts turn 0. Each agent's observation is its OWN chat history:
  the prompt it was given, its own past responses, then one user message per finished turn that
  carries the feedback it was given (and the instructions for the next turn). Another agent's
  raw response never appears in it unless the task's docstring says so.
- `TaskEpisode.step(joint_action)` takes every agent's response for the current turn, returns a
  `StepResult` (joint reward shared by all agents, feedback per agent, done, level diagnostics)
  and advances `turn`. `done` is True after `num_turns` steps, or earlier on early termination
  (below); stepping further raises `EpisodeFinishedError`.
- Reward shift and early termination (the paper's code, per task): `Task.reward_shift` is added
  to every turn's reward exactly once, in `step` (CoMLRL applies its `reward_processor` shift to
  each turn's reward: comlrl/trainers/actor_critic/maac.py:650-651, reinforce/magrpo.py:1296;
  `RewardProcessors.shift` in comlrl/utils/reward_processor.py:20-22). With
  `Task.early_stop_threshold` set, the episode ends after a turn whose SHIFTED reward is strictly
  above the threshold (maac.py:713-717, iac.py:698-702: `mean_reward > threshold`, then `break`).
  A branching rollout decides on the mean of the K sibling rewards of a node instead
  (magrpo.py:853-860): it steps with `early_stop=False` and calls `end_early` itself.
- `TaskEpisode.clone()` deep-copies the episode state (not the task or its dataset) so a
  branching rollout can continue each joint action on its own copy.

Rewards are deterministic functions of the problem and the actions (the coding task runs tests
in a sandbox with time limits: a test that only times out under heavy load is the exception).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

SPLITS: tuple[str, ...] = ("train", "eval")


class EpisodeFinishedError(RuntimeError):
    """`step` was called on an episode whose last turn was already played."""


@dataclass(frozen=True)
class Problem:
    problem_id: str
    split: str
    payload: dict[str, Any]  # task-specific, JSON-serialisable; treat as read-only


@dataclass
class StepResult:
    reward: float  # joint reward, shared by every agent
    feedback: dict[str, str]  # per agent: the feedback text it gets (also its next user message)
    done: bool
    info: dict[str, Any] = field(default_factory=dict)  # level diagnostics, JSON-serialisable


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def early_stop_reached(rewards: list[float], threshold: float | None) -> bool:
    """The paper's early-termination test: the mean of the (shifted) rewards of a turn is strictly
    above `threshold` (comlrl maac.py:713-717 on one joint action, magrpo.py:853-860 on the K
    joint actions of a node). `threshold=None` never stops."""
    return threshold is not None and bool(rewards) and sum(rewards) / len(rewards) > threshold


class Task(ABC):
    name: ClassVar[str]
    agents: tuple[str, ...]
    num_turns: int
    reward_shift: float = 0.0  # added to every turn's reward, once, in TaskEpisode.step
    early_stop_threshold: float | None = None  # end the episode once the shifted reward exceeds it

    @abstractmethod
    def problems(self, split: str) -> list[Problem]:
        """The problems of `split` ("train" or "eval") in a fixed order."""

    @abstractmethod
    def new_episode(self, problem: Problem) -> TaskEpisode:
        """A fresh episode at turn 0 on `problem`."""

    def get_problem(self, problem_id: str) -> Problem:
        """Looks a problem up by id in any split (for replaying traces)."""
        for split in SPLITS:
            for p in self.problems(split):
                if p.problem_id == problem_id:
                    return p
        raise KeyError(f"task {self.name!r} has no problem {problem_id!r}")


class TaskEpisode(ABC):
    """One problem played for `num_turns` joint turns.

    Subclasses write `_initial_prompt(agent)` and `_evaluate(joint_action)`; this base class
    validates joint actions, keeps the per-agent histories and advances the turn.
    """

    def __init__(self, task: Task, problem: Problem):
        self.task = task
        self.problem = problem
        self.turn = 0
        self.done = False
        self._history: dict[str, list[dict[str, str]]] = {
            agent: [user(self._initial_prompt(agent))] for agent in task.agents
        }

    @property
    def agents(self) -> tuple[str, ...]:
        return self.task.agents

    @property
    def num_turns(self) -> int:
        return self.task.num_turns

    @property
    def is_last_turn(self) -> bool:
        return self.turn + 1 >= self.num_turns

    def observation(self, agent: str) -> list[dict[str, str]]:
        """`agent`'s chat history (a copy): its prompts, its own responses, its feedback."""
        if agent not in self._history:
            raise ValueError(
                f"unknown agent {agent!r}; agents of {self.task.name!r}: {', '.join(self.agents)}"
            )
        return [dict(m) for m in self._history[agent]]

    def step(self, joint_action: dict[str, str], *, early_stop: bool = True) -> StepResult:
        """Plays the current turn. The reward is the task's reward plus `Task.reward_shift`; the
        episode also ends when that reward is above `Task.early_stop_threshold` (unless
        `early_stop=False`: a caller that decides on several siblings, then `end_early`)."""
        if self.done:
            raise EpisodeFinishedError(
                f"episode on {self.problem.problem_id!r} already played its {self.num_turns} turns"
            )
        self._check_joint_action(joint_action)
        raw_reward, feedback, info = self._evaluate(dict(joint_action))
        shift, threshold = float(self.task.reward_shift), self.task.early_stop_threshold
        reward = float(raw_reward) + shift
        stopped = (early_stop and not self.is_last_turn
                   and early_stop_reached([reward], threshold))
        done = self.is_last_turn or stopped
        for agent in self.agents:
            self._history[agent].append(assistant(joint_action[agent]))
            if not done:
                self._history[agent].append(user(feedback[agent]))
        info = {"turn": self.turn, **info}
        if shift or threshold is not None:  # other tasks' infos stay as they were
            info.update(raw_reward=float(raw_reward), reward_shift=shift,
                        early_stop_threshold=threshold, early_stop=stopped)
        self.turn += 1
        self.done = done
        return StepResult(reward=reward, feedback=feedback, done=done, info=info)

    def end_early(self, result: StepResult) -> StepResult:
        """Ends the episode after the turn just played (early termination decided by the caller,
        e.g. on the mean of a node's siblings): drops the feedback queued for a next turn and
        returns `result` marked done."""
        if self.turn == 0 or result.done:
            raise ValueError("end_early needs a played, non-final turn")
        for agent in self.agents:
            if self._history[agent][-1]["role"] == "user":
                self._history[agent].pop()
        self.done = True
        return StepResult(reward=result.reward, feedback=result.feedback, done=True,
                          info={**result.info, "early_stop": True})

    def clone(self) -> TaskEpisode:
        # The task (and its dataset) and the read-only problem are shared, the rest is copied.
        memo = {id(self.task): self.task, id(self.problem): self.problem}
        return copy.deepcopy(self, memo)

    def _check_joint_action(self, joint_action: dict[str, str]) -> None:
        if not isinstance(joint_action, dict):
            raise TypeError(
                f"joint_action must be a dict agent -> response, got {type(joint_action).__name__}"
            )
        missing = [a for a in self.agents if a not in joint_action]
        extra = sorted(str(a) for a in joint_action if a not in self.agents)
        if missing or extra:
            raise ValueError(
                f"joint_action must have exactly the agents {list(self.agents)} "
                f"(missing: {missing}, unexpected: {extra})"
            )
        for agent in self.agents:
            if not isinstance(joint_action[agent], str):
                got = type(joint_action[agent]).__name__
                raise TypeError(f"response of {agent!r} must be str, got {got}")

    @abstractmethod
    def _initial_prompt(self, agent: str) -> str:
        """The first user message of `agent`."""

    @abstractmethod
    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        """Applies the joint action of turn `self.turn`: (reward, feedback per agent, info).

        Feedback for agent i must not quote another agent's raw response (see module doc).
        """
