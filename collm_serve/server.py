"""Run one agent: gRPC server (AgentService + health + reflection), engine, metrics, drain.
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

from collm_serve.adapters.registry import AdapterRegistry
from collm_serve.admission import Admission
from collm_serve.config import AgentConfig, ConfigError
from collm_serve.metrics import ServiceMetrics
from collm_serve.models import model_id_for, resolve_model
from collm_serve.proto.collm.v1 import agent_pb2, agent_pb2_grpc
from collm_serve.rpc import BindError, announce, build_grpc_server, server_credentials, set_health
from collm_serve.service import AgentServicer, ServiceState

log = logging.getLogger("collm.serve")
SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


def _pin_to_cores(cores: list[int]) -> None:
    available = os.sched_getaffinity(0)
    if not set(cores) <= available:
        raise ConfigError(f"cpu_affinity: cores {sorted(set(cores) - available)} are not available to this "
                          f"process (available: {sorted(available)}); list cores from that set")
    os.sched_setaffinity(0, cores)


def engine_for(config: AgentConfig, model_dir, model_id: str):
    """The agent's engine, built from its config (not started): every engine option in one place."""
    from collm_serve.engines import create_engine

    if config.engine == "vllm":
        options = {"kv_cache_bytes": config.kv_cache_bytes, "gpu_memory_utilization": config.gpu_memory_utilization,
                   "tensor_parallel_size": config.tensor_parallel_size, "quantization": config.quantization,
                   "max_num_seqs": config.max_num_seqs, "enable_prefix_caching": config.enable_prefix_caching}
    else:
        options = {"cpu_threads": config.cpu_threads}
    return create_engine(
        config.engine, model_dir, model_id, max_model_len=config.max_model_len,
        max_loras=config.keep_versions + config.swap_slots, max_lora_rank=config.max_lora_rank,
        dtype=config.dtype, seed=config.seed, **options,
    )


async def serve(config: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT or a dead engine; returns the process exit code."""
    state = ServiceState()
    metrics = ServiceMetrics(config.name)
    model_dir = resolve_model(config.model)
    model_id = model_id_for(config.model)
    if config.cpu_affinity:  # before the engine starts: its processes inherit it, vLLM binds to it
        _pin_to_cores(config.cpu_affinity)
    engine = engine_for(config, model_dir, model_id)
    registry = AdapterRegistry(
        engine, agent=config.name, base_model_id=model_id, base_model_dir=model_dir,
        adapter_root=config.resolved_adapter_root, state_dir=config.resolved_state_dir,
        keep_versions=config.keep_versions, swap_slots=config.swap_slots, max_lora_rank=config.max_lora_rank,
        slot_wait_s=config.adapter_slot_wait_s,
        on_change=lambda lv: metrics.active_adapter.labels(config.name).set(lv.version if lv else 0),
    )
    admission = Admission(
        config.max_concurrent_requests, config.max_queued_requests,
        on_change=lambda w, r: (metrics.queue_depth.labels(config.name).set(w),
                                metrics.in_flight.labels(config.name).set(r)),
    )
    servicer = AgentServicer(config, engine, None, registry, admission, metrics, state)
    try:
        server, port, health_servicer = build_grpc_server(
            [(agent_pb2_grpc.add_AgentServiceServicer_to_server, servicer)], [SERVICE_NAME],
            config.auth, server_credentials(config.tls), f"{config.host}:{config.port}",
        )
        metrics_port = None
        if config.metrics_port is not None:
            try:
                metrics_port = metrics.serve(config.metrics_port, config.host)
            except OSError as e:
                raise BindError(f"cannot serve metrics on {config.host}:{config.metrics_port}: {e.strerror}; "
                                "pick a free --metrics-port (0 = any free)") from None
        http, http_port = None, None
        if config.http_port is not None:
            from collm_serve.http_api import OpenAIEndpoint

            http = OpenAIEndpoint(servicer)
            try:
                http_port = await http.start(config.host, config.http_port)
            except OSError as e:
                raise BindError(f"cannot serve HTTP on {config.host}:{config.http_port}: {e.strerror}; "
                                "pick a free --http-port (0 = any free)") from None
    except BindError as e:
        announce("failed", agent=config.name, reason=str(e))
        raise
    stop = asyncio.Event()
    exit_code = 0

    def engine_died() -> None:
        nonlocal exit_code
        log.error("engine is dead; reporting NOT_SERVING and exiting for a restart")
        exit_code = 3
        stop.set()

    state.on_engine_dead = engine_died
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await server.start()
    await set_health(health_servicer, [SERVICE_NAME], serving=False)
    announce("listening", agent=config.name, port=port, metrics_port=metrics_port, http_port=http_port)
    try:
        await engine.start()
        from transformers import AutoTokenizer

        servicer.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        restored = await registry.restore()
        state.phase = "serving"
        await set_health(health_servicer, [SERVICE_NAME], serving=True)
        announce("serving", agent=config.name, port=port, metrics_port=metrics_port, http_port=http_port,
                 engine=engine.info().engine, base_model=model_id,
                 adapter_version=restored.version if restored else 0)
        await stop.wait()
    except Exception as e:
        log.exception("agent %s failed to start", config.name)
        announce("failed", agent=config.name, reason=f"{type(e).__name__}: {e}")
        exit_code = 2
    finally:
        # Drain ourselves rather than through server.stop(grace): grpc.aio cancels handlers that
        # are awaiting when stop() begins, which would kill the very requests we want to finish.
        state.phase = "draining"
        admission.draining = True
        await set_health(health_servicer, [SERVICE_NAME], serving=False)
        announce("draining", agent=config.name, in_flight=len(state.in_flight))
        if exit_code == 0 and not await admission.wait_idle(config.drain_seconds):
            log.warning("drain timeout: %d request(s) still in flight are cancelled", len(state.in_flight))
        await server.stop(grace=1.0)
        if http is not None:
            await http.stop()
        await engine.shutdown()
        announce("stopped", agent=config.name, exit_code=exit_code)
    return exit_code


def run(config: AgentConfig) -> int:
    if not logging.getLogger().handlers:  # the CLI's --log-level / --log-format set it up already
        from collm_serve.logs import configure_logging

        configure_logging()
    return asyncio.run(serve(config))
