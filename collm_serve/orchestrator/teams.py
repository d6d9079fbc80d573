"""A team config meets its task: build the task, check the agents match, plan the episodes.

Episode plan (what `collect` runs and `--resume` keys on): episode i (i = start, start+1, ...)
plays problem i mod P of the split (P problems, the task's fixed order) with seed
`team.seed + i`; its key is (problem_id, seed), which `TraceStore.completed_keys` returns for
ok episodes. A trainer's online loop passes a growing `start` so every round gets fresh keys.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from collm_serve.config import ConfigError, load_agents_file
from collm_serve.tasks import get_task, task_class
from collm_serve.tasks.base import Problem, Task, check_split
from collm_serve.team import TeamConfig, team_env_defaults


def build_task(team: TeamConfig) -> Task:
    """The team's task (with `team.turns` applied); ConfigError if the agents do not match."""
    options = dict(team.task_options)
    try:
        cls = task_class(team.task)
        if team.turns is not None:
            params = inspect.signature(cls.__init__).parameters
            if "num_turns" in params:
                options.setdefault("num_turns", team.turns)
        task = get_task(team.task, **options)
    except ValueError as e:
        raise ConfigError(f"team: task: {e}") from None
    if team.turns is not None and task.num_turns != team.turns:
        raise ConfigError(f"team: turns: task {team.task!r} always plays {task.num_turns} turn(s); "
                          f"remove turns: {team.turns}")
    missing = [a for a in task.agents if a not in team.agents]
    extra = [a for a in team.agents if a not in task.agents]
    if missing or extra:
        raise ConfigError(
            f"team: agents: task {team.task!r} has agents {list(task.agents)}; the team "
            f"lacks {missing or 'none'} and has unknown {extra or 'none'} (one entry per task agent)"
        )
    return task


def default_team(task: str, **overrides) -> TeamConfig:
    """A team of the built-in agent services (default_agents.yaml ports on localhost) for `task`,
    so `collm-serve collect --task coding` works with `collm-serve start --agent helper` etc."""
    agents_cfg, _ = load_agents_file()
    try:
        agent_names = task_class(task)().agents
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--task: {e}") from None
    agents = {}
    for name in agent_names:
        if name not in agents_cfg:
            raise ConfigError(f"--task {task}: no built-in agent {name!r}; pass --team")
        agents[name] = {"address": f"localhost:{agents_cfg[name].get('port', 50061)}"}
    settings = {k: v for k, v in overrides.items() if v is not None}
    team_env_defaults(settings)
    return TeamConfig(task=task, agents=agents, **settings)


@dataclass(frozen=True)
class PlannedEpisode:
    index: int
    problem: Problem
    seed: int

    @property
    def key(self) -> tuple[str, int]:
        return self.problem.problem_id, self.seed


def plan_episodes(task: Task, split: str, episodes: int, base_seed: int, start: int = 0) -> list[PlannedEpisode]:
    problems = task.problems(check_split(split))
    if not problems:
        raise ConfigError(f"task has no {split!r} problems")
    return [PlannedEpisode(i, problems[i % len(problems)], base_seed + i)
            for i in range(start, start + episodes)]


def find_problem(task: Task, split: str, problem_id: str | None = None, index: int | None = None) -> Problem:
    """A problem of `split` by id or by position (KeyError / IndexError when there is none)."""
    problems = task.problems(check_split(split))
    if problem_id is not None:
        for p in problems:
            if p.problem_id == problem_id:
                return p
        raise KeyError(f"no problem {problem_id!r} in split {split!r}")
    if index is None or not 0 <= index < len(problems):
        raise IndexError(f"problem index {index} out of range: split {split!r} has {len(problems)} problems")
    return problems[index]
