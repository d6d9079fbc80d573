"""Shared fixtures: real agent services in their own processes, on port 0.

COLLM_HOME defaults to <repo>/.collm so the embedded model is converted once and the engine
kernel caches survive between runs (CI keeps nothing else)."""

from __future__ import annotations

import os
import queue
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("COLLM_HOME", str(REPO / ".collm"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collm_serve.launcher import AgentProcess  # noqa: E402


def write_agents_yaml(path: Path, agents: dict[str, dict]) -> Path:
    path.write_text(yaml.safe_dump({"agents": agents}))
    return path


def grpcurl_path() -> str:
    found = shutil.which("grpcurl") or str(Path(os.sys.executable).parent / "grpcurl")
    return found


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("collm-session")


@pytest.fixture(scope="session")
def adapter_root(session_dir) -> Path:
    root = session_dir / "adapters"
    root.mkdir()
    return root


def start_agent(tmp: Path, name: str = "helper", **settings) -> AgentProcess:
    """Start one agent process with a config written to `tmp`; caller stops it."""
    base = {
        "engine": "transformers", "model": "embedded:tiny-llama", "port": 0, "metrics_port": 0,
        "max_model_len": 512, "max_prompt_tokens": 256, "max_tokens_limit": 128,
        "sampling": {"max_tokens": 16, "temperature": 0.7, "top_p": 0.9},
        "state_dir": str(tmp / f"state-{name}"), "drain_seconds": 60, "cpu_threads": 1,
    }
    base.update(settings)
    cfg = write_agents_yaml(tmp / f"agents-{name}.yaml", {name: base})
    return AgentProcess(name, config=cfg, log_path=tmp / f"{name}.log").start(timeout=600)


def metrics_text(agent: AgentProcess) -> str:
    """The agent's Prometheus exposition, as text."""
    return urllib.request.urlopen(f"http://localhost:{agent.metrics_port}/metrics", timeout=10).read().decode()


def gauge(agent: AgentProcess, name: str) -> float:
    line = next((ln for ln in metrics_text(agent).splitlines() if ln.startswith(name + "{")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])  # no sample before the first set


def wait_in_engine(agent: AgentProcess, at_least: int = 1, timeout: float = 60.0) -> None:
    """Block until `at_least` requests hold an engine slot: a fixed sleep races on a slow CI box.

    The gauge rises when the admission slot is taken, and the adapter is chosen in the same
    event-loop step, so a swap sent after this returns cannot change the request's version.
    """
    deadline = time.monotonic() + timeout
    while gauge(agent, "collm_requests_in_flight") < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} request(s) in the engine after {timeout:.0f}s"
        time.sleep(0.02)


def wait_event(agent: AgentProcess, name: str, timeout: float = 60.0) -> dict:
    """The agent's next stdout event called `name` (earlier events are consumed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = agent.events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"agent {agent.agent} announced no {name!r} within {timeout:.0f}s") from None
        if event.get("event") == name:
            return event


@pytest.fixture(scope="session")
def vllm_agent(session_dir, adapter_root):
    """The real vLLM CPU engine serving SmolLM2-135M-Instruct (shared: start-up is ~50 s)."""
    agent = start_agent(
        session_dir, "helper", engine="vllm", model="embedded:smollm2-135m-instruct",
        max_model_len=1024, max_prompt_tokens=768, max_tokens_limit=256,
        kv_cache_bytes=128 << 20, adapter_root=str(adapter_root), keep_versions=3,
        max_concurrent_requests=16, max_queued_requests=64, cpu_threads=None,
    )
    yield agent
    agent.stop()


@pytest.fixture(scope="session")
def hf_agent(session_dir, adapter_root):
    """The transformers engine serving SmolLM2 (the reference engine)."""
    agent = start_agent(
        session_dir, "helper", engine="transformers", model="embedded:smollm2-135m-instruct",
        max_model_len=1024, max_prompt_tokens=768, max_tokens_limit=256,
        adapter_root=str(adapter_root), keep_versions=3, state_dir=str(session_dir / "state-hf"),
        cpu_threads=None,
    )
    yield agent
    agent.stop()
