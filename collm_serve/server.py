"""Run one agent: gRPC server (AgentService + health + reflection), engine, metrics, drain.

Order matters: the gRPC port opens first with health NOT_SERVING, so orchestrators and k8s
probes see "loading" instead of "connection refused"; health turns SERVING only after the
engine is up and the persisted adapter version is active again. SIGTERM: health NOT_SERVING,
new requests get UNAVAILABLE, in-flight ones finish within `drain_seconds`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from collm_serve.adapters.registry import AdapterRegistry
from collm_serve.admission import Admission
from collm_serve.auth import AuthInterceptor, AuthPolicy
from collm_serve.config import AgentConfig, ConfigError, TLSConfig
from collm_serve.metrics import ServiceMetrics
from collm_serve.models import model_id_for, resolve_model
from collm_serve.proto.collm.v1 import agent_pb2, agent_pb2_grpc
from collm_serve.service import AgentServicer, ServiceState

log = logging.getLogger("collm.serve")
SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
MAX_MESSAGE_BYTES = 16 << 20


def server_credentials(tls: TLSConfig | None) -> grpc.ServerCredentials | None:
    """TLS of any collm server (agent or orchestrator); a client CA makes it mTLS."""
    if tls is None:
        return None
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def announce(event: str, **fields) -> None:
    """One JSON line per life-cycle event on stdout (tests and supervisors parse it)."""
    print(json.dumps({"event": event, **fields}), flush=True)


class _Undecodable:
    """Stands in for a request body that did not parse (see `DecodeErrorInterceptor`)."""

    def __init__(self, error: Exception):
        self.error = error


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """A body that is not a valid protobuf (or holds invalid UTF-8 in a string field) is the
    client's fault: answer INVALID_ARGUMENT, not grpc.aio's UNKNOWN "Unexpected DecodeError"."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        parse = handler.request_deserializer

        def tolerant_parse(raw: bytes):
            try:
                return parse(raw)
            except DecodeError as e:
                return _Undecodable(e)

        async def refuse(request, context) -> None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request does not parse: {request.error}")

        if inspect.iscoroutinefunction(handler.unary_unary):
            behaviour = handler.unary_unary

            async def unary(request, context):
                if isinstance(request, _Undecodable):
                    await refuse(request, context)
                return await behaviour(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, tolerant_parse, handler.response_serializer)
        if not inspect.isasyncgenfunction(handler.unary_stream):
            return handler  # e.g. health Watch (context.write style): not ours, left as it is
        behaviour = handler.unary_stream

        async def stream(request, context):
            if isinstance(request, _Undecodable):
                await refuse(request, context)
            responses = behaviour(request, context)
            try:
                async for response in responses:
                    yield response
            finally:
                await responses.aclose()

        return grpc.unary_stream_rpc_method_handler(stream, tolerant_parse, handler.response_serializer)


def _pin_to_cores(cores: list[int]) -> None:
    available = os.sched_getaffinity(0)
    if not set(cores) <= available:
        raise ConfigError(f"cpu_affinity: cores {sorted(set(cores) - available)} are not available to this "
                          f"process (available: {sorted(available)}); list cores from that set")
    os.sched_setaffinity(0, cores)


class BindError(RuntimeError):
    """A server could not listen on its address (port in use, host not of this machine, ...)."""


def _why_not_bindable(host: str, port: int) -> str:
    """What stops a listener on host:port, found by trying it with a plain socket: gRPC's own
    error only says "Failed to bind"."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"host {host!r} does not resolve ({e.strerror}); pick another --host"
    reasons = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(sockaddr)
            except OSError as e:
                reasons.append(e.errno)
    if errno.EADDRINUSE in reasons:
        return (f"port {port} is already in use (another agent or service on it?); pick a free "
                "--port (0 = any free) or stop the other process")
    if errno.EACCES in reasons:
        return f"port {port} needs privileges; use a port above 1023"
    if errno.EADDRNOTAVAIL in reasons:
        return f"{host} is not an address of this machine; use --host 127.0.0.1 or 0.0.0.0"
    return "gRPC refused the address (GRPC_VERBOSITY=debug shows why)"


def build_grpc_server(servicers, service_names, auth: AuthPolicy | None, credentials, address: str):
    """A grpc.aio server with the given servicers + health + reflection; returns (server, port, health).

    `auth` (collm_serve.auth) guards every RPC but health and reflection; None or an empty
    policy leaves the door open (the callers log a warning when that is on a public address).
    Raises BindError when the address cannot be listened on. SO_REUSEPORT is off: gRPC turns it
    on by default, which lets a second server bind a port in use and the kernel then splits
    connections (requests, hot-swaps) between the two processes without a word.
    """
    interceptors = [*([AuthInterceptor(auth)] if auth is not None and auth.enabled else []),
                    DecodeErrorInterceptor()]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)],
    )
    for add, servicer in servicers:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        host, _, port_text = address.rpartition(":")
        why = _why_not_bindable(host, int(port_text)) if port_text.isdigit() else "gRPC refused the address"
        raise BindError(f"cannot listen on {address}: {why}") from None
    return server, port, health_servicer


async def set_health(health_servicer, names, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *names):
        await health_servicer.set(name, status)


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
        max_loras=config.keep_versions, max_lora_rank=config.max_lora_rank,
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
        keep_versions=config.keep_versions, max_lora_rank=config.max_lora_rank,
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
