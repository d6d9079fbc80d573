"""Prometheus metrics of one agent service, on its own registry (several services may share a
process in tests) and served over HTTP by prometheus_client."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the HTTP exporter; returns the bound port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
