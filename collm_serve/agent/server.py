"""Run agents: gRPC server (AgentService + health + reflection), engine, metrics, drain. One
agent per process is the default; agents packed on one engine (collm_serve/agent/packing.py) each get
their own endpoint (port, health, auth, metrics, registry, state dir) around the shared engine.
The gRPC plumbing it shares with the orchestrator lives in collm_serve/rpc.py.

Order matters: the gRPC port opens first with health NOT_SERVING, so orchestrators and k8s
probes see "loading" instead of "connection refused"; health turns SERVING only after the
engine is up and the persisted adapter version is active again. SIGTERM: health NOT_SERVING,
new requests get UNAVAILABLE, in-flight ones finish within `drain_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass

from collm_serve.adapters.registry import AdapterRegistry
from collm_serve.agent.admission import Admission
from collm_serve.config import AgentConfig, ConfigError
from collm_serve.engines.shared import SharedEngine
from collm_serve.metrics import ServiceMetrics
from collm_serve.models import model_id_for, resolve_model
from collm_serve.agent.packing import check_packable, lora_slots
from collm_serve.proto.collm.v1 import agent_pb2, agent_pb2_grpc
from collm_serve.rpc import BindError, announce, build_grpc_server, server_credentials, set_health
from collm_serve.agent.service import AgentServicer, ServiceState

log = logging.getLogger("collm.serve")
SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


def _pin_to_cores(cores: list[int]) -> None:
    available = os.sched_getaffinity(0)
    if not set(cores) <= available:
        raise ConfigError(f"cpu_affinity: cores {sorted(set(cores) - available)} are not available to this "
                          f"process (available: {sorted(available)}); list cores from that set")
    os.sched_setaffinity(0, cores)


def engine_for(config: AgentConfig, model_dir, model_id: str, max_loras: int | None = None):
    """The agent's engine, built from its config (not started): every engine option in one place.
    `max_loras`: the LoRA slots of an engine shared by packed agents (packing.py `lora_slots`)."""
    from collm_serve.engines import create_engine

    if config.engine == "vllm":
        options = {"kv_cache_bytes": config.kv_cache_bytes, "gpu_memory_utilization": config.gpu_memory_utilization,
                   "tensor_parallel_size": config.tensor_parallel_size, "quantization": config.quantization,
                   "max_num_seqs": config.max_num_seqs, "enable_prefix_caching": config.enable_prefix_caching,
                   "arrival_quiet_s": config.arrival_quiet_ms / 1000}
    else:
        options = {"cpu_threads": config.cpu_threads}
    return create_engine(
        config.engine, model_dir, model_id, max_model_len=config.max_model_len,
        max_loras=config.adapter_slots if max_loras is None else max_loras,
        max_lora_rank=config.max_lora_rank,
        dtype=config.dtype, seed=config.seed, **options,
    )


@dataclass
class Endpoint:
    """One agent's service: its own state, metrics, registry, admission, servicer and ports."""

    config: AgentConfig
    state: ServiceState
    metrics: ServiceMetrics
    registry: AdapterRegistry
    admission: Admission
    servicer: AgentServicer
    server: object = None
    port: int | None = None
    health: object = None
    metrics_port: int | None = None
    http: object = None
    http_port: int | None = None


def _endpoint(config: AgentConfig, engine, lora_ids, model_dir, model_id: str) -> Endpoint:
    state = ServiceState()
    metrics = ServiceMetrics(config.name)
    registry = AdapterRegistry(
        engine, agent=config.name, base_model_id=model_id, base_model_dir=model_dir,
        adapter_root=config.resolved_adapter_root, state_dir=config.resolved_state_dir,
        keep_versions=config.keep_versions, swap_slots=config.swap_slots, max_lora_rank=config.max_lora_rank,
        slot_wait_s=config.adapter_slot_wait_s, lora_ids=lora_ids,
        on_change=lambda lv: metrics.active_adapter.labels(config.name).set(lv.version if lv else 0),
    )
    admission = Admission(
        config.max_concurrent_requests, config.max_queued_requests,
        on_change=lambda w, r: (metrics.queue_depth.labels(config.name).set(w),
                                metrics.in_flight.labels(config.name).set(r)),
    )
    servicer = AgentServicer(config, engine, None, registry, admission, metrics, state)
    return Endpoint(config, state, metrics, registry, admission, servicer)


async def _bind(ep: Endpoint) -> None:
    """Open the agent's gRPC, metrics and HTTP ports (raises BindError naming the flag)."""
    config = ep.config
    ep.server, ep.port, ep.health = build_grpc_server(
        [(agent_pb2_grpc.add_AgentServiceServicer_to_server, ep.servicer)], [SERVICE_NAME],
        config.auth, server_credentials(config.tls), f"{config.host}:{config.port}",
    )
    if config.metrics_port is not None:
        try:
            ep.metrics_port = ep.metrics.serve(config.metrics_port, config.host)
        except OSError as e:
            raise BindError(f"cannot serve metrics on {config.host}:{config.metrics_port}: {e.strerror}; "
                            "pick a free --metrics-port (0 = any free)") from None
    if config.http_port is not None:
        from collm_serve.agent.http_api import OpenAIEndpoint

        ep.http = OpenAIEndpoint(ep.servicer)
        try:
            ep.http_port = await ep.http.start(config.host, config.http_port)
        except OSError as e:
            raise BindError(f"cannot serve HTTP on {config.host}:{config.http_port}: {e.strerror}; "
                            "pick a free --http-port (0 = any free)") from None


async def serve(config: AgentConfig) -> int:
    """Run one agent until SIGTERM/SIGINT or a dead engine; returns the process exit code."""
    return await serve_group([config])


async def serve_group(configs: list[AgentConfig]) -> int:
    """Run agents on ONE engine (packing.py), each its own endpoint; one agent is the usual case.

    The engine, the process and its life are shared: a dead engine stops every agent (exit 3),
    SIGTERM drains them all, and nothing outlives the process (die_with_agent.py).
    """
    check_packable(configs)
    first = configs[0]
    model_dir = resolve_model(first.model)
    model_id = model_id_for(first.model)
    if first.cpu_affinity:  # before the engine starts: its processes inherit it, vLLM binds to it
        _pin_to_cores(first.cpu_affinity)
    shared = SharedEngine(engine_for(first, model_dir, model_id, max_loras=lora_slots(configs)))
    endpoints = [_endpoint(c, shared.view(c.name), shared.lora_ids, model_dir, model_id) for c in configs]
    try:
        for ep in endpoints:
            await _bind(ep)
    except BindError as e:
        for ep in endpoints:
            announce("failed", agent=ep.config.name, reason=str(e))
        raise
    stop = asyncio.Event()
    exit_code = 0

    def engine_died() -> None:
        nonlocal exit_code
        log.error("engine is dead; reporting NOT_SERVING and exiting for a restart")
        exit_code = 3
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    for ep in endpoints:
        ep.state.on_engine_dead = engine_died
        await ep.server.start()
        await set_health(ep.health, [SERVICE_NAME], serving=False)
        announce("listening", agent=ep.config.name, port=ep.port, metrics_port=ep.metrics_port,
                 http_port=ep.http_port)
    try:
        await shared.engine.start()
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for ep in endpoints:
            ep.servicer.tokenizer = tokenizer
            restored = await ep.registry.restore()
            ep.state.phase = "serving"
            await set_health(ep.health, [SERVICE_NAME], serving=True)
            announce("serving", agent=ep.config.name, port=ep.port, metrics_port=ep.metrics_port,
                     http_port=ep.http_port, engine=shared.engine.info().engine, base_model=model_id,
                     adapter_version=restored.version if restored else 0,
                     **({"packed_with": [c.name for c in configs if c is not ep.config]} if len(configs) > 1 else {}))
        await stop.wait()
    except Exception as e:
        log.exception("agent(s) %s failed to start", ", ".join(c.name for c in configs))
        for ep in endpoints:
            announce("failed", agent=ep.config.name, reason=f"{type(e).__name__}: {e}")
        exit_code = 2
    finally:
        # Drain ourselves rather than through server.stop(grace): grpc.aio cancels handlers that
        # are awaiting when stop() begins, which would kill the very requests we want to finish.
        for ep in endpoints:
            ep.state.phase = "draining"
            ep.admission.draining = True
            await set_health(ep.health, [SERVICE_NAME], serving=False)
            announce("draining", agent=ep.config.name, in_flight=len(ep.state.in_flight))
        if exit_code == 0:
            idle = await asyncio.gather(*(ep.admission.wait_idle(ep.config.drain_seconds) for ep in endpoints))
            for ep, done in zip(endpoints, idle):
                if not done:
                    log.warning("%s: drain timeout: %d request(s) still in flight are cancelled",
                                ep.config.name, len(ep.state.in_flight))
        for ep in endpoints:
            await ep.server.stop(grace=1.0)
            if ep.http is not None:
                await ep.http.stop()
        await shared.engine.shutdown()
        for ep in endpoints:
            announce("stopped", agent=ep.config.name, exit_code=exit_code)
    return exit_code


def run(config: AgentConfig | list[AgentConfig]) -> int:
    """Serve one agent, or several packed on one engine (a list); returns the exit code."""
    if not logging.getLogger().handlers:  # the CLI's --log-level / --log-format set it up already
        from collm_serve.logs import configure_logging

        configure_logging()
    return asyncio.run(serve_group(config if isinstance(config, list) else [config]))
