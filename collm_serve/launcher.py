"""Start agent services as separate OS processes and wait until they serve.

Used by the demo, the orchestrator's `collect --spawn`, benchmarks and tests: each agent is
its own `python -m collm_serve start` process (its own engine, its own GIL), exactly as in
production; or several agents packed in one process on one engine (`AgentProcess(["helper",
"main"])` runs `start --agents helper,main`; collm_serve/agent/packing.py), each with its own
`endpoint(name)`. Life-cycle events are the JSON lines `collm_serve.rpc.announce` prints.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class AgentStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """Where one agent of a process listens, as its `listening` event reported it: the gRPC port,
    and the Prometheus and OpenAI-compatible HTTP ports where the agent serves them (else None).
    Frozen: it is what the process said, not something the launcher may change."""

    agent: str
    port: int
    metrics_port: int | None = None
    http_port: int | None = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"


class AgentProcess:
    """One agent service process; `agent` a list = those agents packed on one engine. `port`,
    `metrics_port`, `http_port` and `address` are the (first) agent's; packed: `endpoint(name)`."""

    def __init__(
        self, agent: str | Sequence[str], *, config: str | os.PathLike[str] | None = None, port: int = 0,
        engine: str | None = None, model: str | None = None, metrics_port: int | None = None,
        adapter_root: str | os.PathLike[str] | None = None, state_dir: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
    ):
        self.agents = [agent] if isinstance(agent, str) else list(agent)
        self.agent = ",".join(self.agents)
        select = ["--agent", self.agent] if isinstance(agent, str) else ["--agents", self.agent]
        args = [sys.executable, "-m", "collm_serve", "start", *select, "--port", str(port)]
        for flag, value in (("--config", config), ("--engine", engine), ("--model", model),
                            ("--metrics-port", metrics_port), ("--adapter-root", adapter_root),
                            ("--state-dir", state_dir)):
            if value is not None:
                args += [flag, str(value)]
        self.args = args
        self.env = {**os.environ, **(env or {})}
        # the child runs the same collm_serve as this process (a checkout beside an editable
        # install elsewhere would otherwise start the other copy's code)
        here = str(Path(__file__).resolve().parents[1])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (self.env.get("PYTHONPATH", ""), here) if p)
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self.serving_event: dict | None = None
        self.endpoints: dict[str, Endpoint] = {}
        self.serving_events: dict[str, dict] = {}

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def endpoint(self, agent: str) -> Endpoint:
        return self.endpoints[agent]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 600.0) -> "AgentProcess":
        if self.running:
            raise RuntimeError(f"agent {self.agent} is already running (pid {self.proc.pid}); stop() it first")
        self.endpoints, self.serving_events = {}, {}  # a restart reports every agent afresh
        stderr = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=stderr, env=self.env,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AgentStartError(f"agent {self.agent} not serving after {timeout:.0f}s") from None
            name = event.get("agent", self.agents[0])
            if event.get("event") == "listening":
                self.endpoints[name] = Endpoint(name, event["port"], event.get("metrics_port"), event.get("http_port"))
                if name == self.agents[0]:
                    self.port, self.metrics_port = event["port"], event.get("metrics_port")
                    self.http_port = event.get("http_port")
            elif event.get("event") == "serving":
                self.serving_events[name] = event
                if name == self.agents[0]:
                    self.serving_event = event
                if set(self.serving_events) >= set(self.agents):
                    return self
            elif event.get("event") in ("failed", "exited"):
                self.stop()
                raise AgentStartError(f"agent {self.agent} failed to start: {event.get('reason', event)}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.events.put({"event": "exited", "reason": f"process exited with {self.proc.wait()}"})

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (drain), then SIGKILL the process group if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reap_group()

    def _reap_group(self) -> None:
        """vLLM's engine-core child must not outlive its server."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "AgentProcess":
        # `with AgentProcess(...).start() as a:` must not start a second process (the first
        # would be orphaned, still serving: seen in a test that did exactly this)
        return self if self.running else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_all(procs: Sequence[AgentProcess], timeout: float = 300.0) -> list[AgentProcess]:
    """Start agent processes in parallel (each start waits for its engine); if any fails, kill
    them all and raise its error, so a half-started team never lingers."""
    errors: list[BaseException] = []

    def go(p: AgentProcess) -> None:
        try:
            p.start(timeout=timeout)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for p in procs:
            p.kill()
        raise errors[0]
    return list(procs)
