"""Prometheus metrics of an agent service and of the orchestrator, each on its own registry
(several services may share a process in tests) and served over HTTP by prometheus_client.

An agent's port also serves the process-wide default registry's `vllm:*` families (TTFT, TPOT,
KV-cache use, queue: `vllm.v1.metrics.loggers.PrometheusStatLogger` registers them there when
the engine runs with `disable_log_stats=False`, in the process that holds `AsyncLLM`, i.e. the
agent's) and its `process_*` families (memory, CPU, open files of the agent process).
"""

from __future__ import annotations

import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Summary, start_http_server

_SHARED_PREFIXES = ("vllm:", "process_")


class SharedFamilies:
    """Collector that re-exports the default registry's `vllm:*` and `process_*` families at
    scrape time (vLLM registers them only once its engine starts, and re-registers on restart)."""

    def collect(self):
        for family in REGISTRY.collect():
            if family.name.startswith(_SHARED_PREFIXES):
                yield family

    def describe(self):
        return []  # names are only known at scrape time; nothing to reserve in our registry


def serve_registry(registry: CollectorRegistry, port: int, host: str) -> int:
    """Start a /metrics HTTP exporter for `registry`; returns the bound port (0 picks one)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_port

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServiceMetrics:
    def __init__(self, agent: str):
        self.agent = agent
        r = self.registry = CollectorRegistry()
        self.requests = Counter("collm_requests", "RPCs by method and status code", ["agent", "method", "code"], registry=r)
        self.latency = Histogram("collm_request_latency_seconds", "RPC latency", ["agent", "method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("collm_tokens_generated", "Completion tokens generated", ["agent"], registry=r)
        self.queue_depth = Gauge("collm_queue_depth", "Requests waiting for an engine slot", ["agent"], registry=r)
        self.in_flight = Gauge("collm_requests_in_flight", "Requests in the engine", ["agent"], registry=r)
        self.active_adapter = Gauge("collm_active_adapter_version", "Active adapter version (0 = base)", ["agent"], registry=r)
        self.swaps = Counter("collm_adapter_swaps", "Adapter operations by outcome", ["agent", "op", "outcome"], registry=r)
        self.swap_latency = Histogram("collm_adapter_swap_seconds", "LoadAdapter latency", ["agent"], buckets=_LATENCY_BUCKETS, registry=r)
        self.active_adapter.labels(agent).set(0)
        r.register(SharedFamilies())

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the HTTP exporter; returns the bound port (0 picks a free one)."""
        return serve_registry(self.registry, port, host)


class OrchestratorMetrics:
    """Episodes of one orchestrator, fed its episode runner's events (`observe`):
    episodes by status, the reason kind of failures, RPCs by status code, per-turn latency, per-agent action latency,
    turn rewards and episode returns (namespaced `collm_orchestrator_*`)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.episodes = Counter("collm_orchestrator_episodes", "Episodes finished, by status", ["task", "status"], registry=r)
        self.failures = Counter("collm_orchestrator_episode_failures", "Failed episodes by reason kind",
                                ["task", "reason"], registry=r)
        self.running = Gauge("collm_orchestrator_episodes_running", "Episodes in progress", ["task"], registry=r)
        self.rpcs = Counter("collm_orchestrator_rpcs", "RPCs answered, by method and status code",
                            ["method", "code"], registry=r)
        self.turn_latency = Histogram("collm_orchestrator_turn_latency_seconds",
                                      "From an episode's start (or its previous turn) to a turn stored",
                                      ["task"], buckets=_LATENCY_BUCKETS, registry=r)
        self.action_latency = Histogram("collm_orchestrator_action_latency_seconds", "One agent call",
                                        ["task", "agent"], buckets=_LATENCY_BUCKETS, registry=r)
        self.turn_reward = Summary("collm_orchestrator_turn_reward", "Joint reward of a turn", ["task"], registry=r)
        # Summaries (count, sum: the mean): returns may be negative, and a histogram with negative
        # buckets has no _sum in the Prometheus format.
        self.episode_return = Summary("collm_orchestrator_episode_return", "Final return of ok episodes",
                                      ["task"], registry=r)
        self._last: dict[str, tuple[str, float]] = {}  # episode_id -> (task, time of start / last turn)

    def observe(self, event) -> None:
        from collm_serve.orchestrator.events import AgentActed, EpisodeFinished, EpisodeStarted, TurnStored

        now = time.perf_counter()
        if isinstance(event, EpisodeStarted):
            self._last[event.episode_id] = (event.task, now)
            self.running.labels(event.task).inc()
        elif isinstance(event, AgentActed):
            task = self._last.get(event.episode_id, ("", now))[0]
            self.action_latency.labels(task, event.agent).observe(event.latency_ms / 1000)
        elif isinstance(event, TurnStored):
            task, since = self._last.get(event.episode_id, ("", now))
            self.turn_latency.labels(task).observe(now - since)
            self.turn_reward.labels(task).observe(event.turn.reward)
            self._last[event.episode_id] = (task, now)
        elif isinstance(event, EpisodeFinished):
            o = event.outcome
            if self._last.pop(o.episode_id, None) is not None:
                self.running.labels(o.task).dec()
            self.episodes.labels(o.task, o.status).inc()
            if o.ok and o.final_return is not None:
                self.episode_return.labels(o.task).observe(o.final_return)
            elif not o.ok:
                self.failures.labels(o.task, failure_kind(o.failure_reason)).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        return serve_registry(self.registry, port, host)


def failure_kind(reason: str) -> str:
    """A bounded label for a failure reason (the text itself is in the trace store): its first
    word that is a gRPC status name, else `episode_error` (the task raised), `interrupted`, `other`."""
    import grpc

    names = {c.name for c in grpc.StatusCode}
    for word in reason.replace(":", " ").replace(",", " ").split():
        if word in names:
            return word
    if reason.startswith("episode error"):
        return "episode_error"
    return "interrupted" if "interrupt" in reason else "other"
