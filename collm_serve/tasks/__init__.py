"""Task environments (the paper's domains, all offline) behind one registry.

    task = get_task("coding")             # cooperative HumanEval, 2 turns (coding.py)
    task = get_task("writing")            # the paper's TLDR task: two summaries, 1 turn (writing.py)
    task = get_task("writing_arxiv")      # the paper's arXiv task: abstract -> introduction
    task = get_task("strbuild")           # the paper's StrBuild, Minecraft strings (strbuild.py)
    task = get_task("housebuild")         # the paper's HouseBuild, Minecraft houses (housebuild.py)
    task = get_task("build", num_turns=4) # our own 3D voxel game after StrBuild (build.py, voxel.py)
    task = get_task("toy")                # trivially learnable, for trainer tests (toy.py)
    task = get_task("tally", variant="long")  # issue 28's LLM miniature: build a total (tally.py)

The interface is in base.py; model-written code runs only through sandbox.py. Importing this
package is cheap (stdlib only): task modules load on first `get_task`.
"""

from __future__ import annotations

import importlib
import inspect

from collm_serve.tasks.base import (
    SPLITS,
    EpisodeFinishedError,
    Problem,
    StepResult,
    Task,
    TaskEpisode,
    early_stop_reached,
)

_REGISTRY: dict[str, tuple[str, str]] = {
    "build": ("collm_serve.tasks.build", "BuildTask"),
    "coding": ("collm_serve.tasks.coding", "CodingTask"),
    "housebuild": ("collm_serve.tasks.housebuild", "HouseBuildTask"),
    "strbuild": ("collm_serve.tasks.strbuild", "StrBuildTask"),
    "tally": ("collm_serve.tasks.tally", "TallyTask"),
    "toy": ("collm_serve.tasks.toy", "ToyTask"),
    "writing": ("collm_serve.tasks.writing", "WritingTask"),
    "writing_arxiv": ("collm_serve.tasks.writing", "WritingArxivTask"),
}
TASKS: tuple[str, ...] = tuple(sorted(_REGISTRY))


def task_class(name: str) -> type[Task]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def get_task(name: str, **options) -> Task:
    """A new task instance; `options` are the task class's keyword arguments."""
    cls = task_class(name)
    params = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for task {name!r}; valid options: {params or 'none'}"
        )
    return cls(**options)


__all__ = [
    "SPLITS",
    "TASKS",
    "EpisodeFinishedError",
    "Problem",
    "StepResult",
    "Task",
    "TaskEpisode",
    "early_stop_reached",
    "get_task",
    "task_class",
]
