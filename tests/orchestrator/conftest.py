"""Fixtures for the orchestrator tests: two real agent services (tiny random Llama, transformers
engine) in their own processes, shared by the whole orchestrator suite, and team builders.

The services run with one torch thread each: on a small shared machine two agents with a
thread per core each oversubscribe it and every token gets ~6x slower.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("COLLM_HOME", str(REPO / ".collm"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collm_serve.launcher import AgentProcess, start_all  # noqa: E402
from collm_serve.team import TeamConfig  # noqa: E402

MAX_TOKENS = 24
TASK_AGENTS = {
    "toy": ("helper", "main"),
    "coding": ("helper", "main"),
    "writing": ("writer_a", "writer_b"),
    "build": ("builder_a", "builder_b"),
}
AGENT_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def agent_process(tmp: Path, name: str) -> AgentProcess:
    """A not-yet-started service `name` on port 0 with its own state dir and adapter root.

    The build game's 4-turn histories outgrow the default 1536-token prompt limit with a
    random model's rare tokens, so the limits are raised (the tiny model has 4096 positions).
    """
    settings = {
        "engine": "transformers", "model": "embedded:tiny-llama", "port": 0,
        "max_model_len": 4096, "max_prompt_tokens": 3968, "max_tokens_limit": 64,
        "sampling": {"max_tokens": MAX_TOKENS, "temperature": 0.7, "top_p": 0.9},
        "state_dir": str(tmp / f"state-{name}"), "adapter_root": str(tmp / "adapters"),
        "drain_seconds": 5,
    }
    cfg = tmp / f"agents-{name}.yaml"
    cfg.write_text(yaml.safe_dump({"agents": {name: settings}}))
    return AgentProcess(name, config=cfg, log_path=tmp / f"{name}.log", env=AGENT_ENV)


@pytest.fixture(scope="session")
def agents(tmp_path_factory):
    """Two running services, "helper" and "main"; any task maps its two agents onto them."""
    tmp = tmp_path_factory.mktemp("orchestrator-agents")
    procs = start_all([agent_process(tmp, "helper"), agent_process(tmp, "main")])
    yield procs
    for p in procs:
        p.stop(timeout=10)


def make_team(task: str, addresses: list[str], traces: Path | str, **overrides) -> TeamConfig:
    names = TASK_AGENTS[task]
    data = {
        "task": task,
        "agents": {n: {"address": a, "timeout_s": 60, "sampling": {"max_tokens": MAX_TOKENS}}
                   for n, a in zip(names, addresses)},
        "traces": str(traces),
        "retry": {"attempts": 2, "backoff_s": 0.05},
    }
    data.update(overrides)
    return TeamConfig(**data)


def write_team(path: Path, team: TeamConfig) -> Path:
    path.write_text(yaml.safe_dump(team.model_dump(mode="json", exclude_none=True)))
    return path


@pytest.fixture
def team_for(agents, tmp_path):
    def build(task: str, **overrides) -> TeamConfig:
        traces = overrides.pop("traces", tmp_path / "traces.db")
        return make_team(task, [p.address for p in agents], traces, **overrides)

    return build


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from collm_serve.models import tiny_model_dir

    return AutoTokenizer.from_pretrained(tiny_model_dir())
