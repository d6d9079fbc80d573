"""gRPC plumbing both collm services share (the agent server, collm_serve/agent/server.py, and the
orchestrator, collm_serve/orchestrator/service.py): server construction with health, reflection,
the auth door and the decode-error interceptor; bind diagnosis; health; life-cycle announces;
and the one outcome ladder that maps what a handler raised to a status code.

The ladder: a `CollmError` goes out with its own code and message; a client cancel, deadline or
early-closed stream is CANCELLED (re-raised); anything else is a bug: logged with its traceback
and answered INTERNAL. Each outcome is counted (when the caller gives a counter) before the
status goes out, because `context.abort` sends it at once and a client that has its answer may
already read /metrics.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from collm_serve.auth import AuthInterceptor, AuthPolicy, checked
from collm_serve.config import TLSConfig
from collm_serve.errors import CAUSE_KEY, CollmError

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

        async def refuse_undecodable(request, context) -> None:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request does not parse: {request.error}")

        if inspect.iscoroutinefunction(handler.unary_unary):
            return grpc.unary_unary_rpc_method_handler(checked(refuse_undecodable, handler.unary_unary),
                                                       tolerant_parse, handler.response_serializer)
        if not inspect.isasyncgenfunction(handler.unary_stream):
            return handler  # e.g. health Watch (context.write style): not ours, left as it is
        return grpc.unary_stream_rpc_method_handler(checked(refuse_undecodable, handler.unary_stream),
                                                    tolerant_parse, handler.response_serializer)


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


@asynccontextmanager
async def outcome(context: grpc.aio.ServicerContext, method: str, log: logging.Logger, *,
                  count: Callable[[grpc.StatusCode], None] = lambda code: None,
                  on_error: Callable[[CollmError], None] = lambda e: None,
                  internal_detail: bool = False):
    """Run one RPC's body inside the ladder (see the module docstring).

    `count(code)` records the outcome; `on_error` sees each domain error first (the agent turns
    an EngineDead into its restart). `internal_detail` puts the exception's type and text in the
    INTERNAL message (the agent, whose callers are its own orchestrators and trainers); without
    it the message names only the method, and the traceback stays in the server's log.
    """
    try:
        yield
    except CollmError as e:
        on_error(e)
        count(e.code)
        if e.cause:
            context.set_trailing_metadata(((CAUSE_KEY, e.cause),))
        await context.abort(e.code, str(e))
    except (asyncio.CancelledError, GeneratorExit):  # client cancel, deadline, stream closed early
        count(grpc.StatusCode.CANCELLED)
        raise
    except Exception as e:  # unexpected → INTERNAL, logged
        log.exception("%s failed", method)
        count(grpc.StatusCode.INTERNAL)
        await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}" if internal_detail
                            else f"{method} failed on the server (an internal error; its log has the details)")
    else:
        count(grpc.StatusCode.OK)
