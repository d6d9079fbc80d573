"""Bearer-token authentication as a server interceptor (gRPC's documented pattern).

Every AgentService / OrchestratorService RPC needs `authorization: Bearer <token>`; the
standard health and reflection services stay open so probes (k8s, grpc_health_probe) and
`grpcurl list` work without secrets — they reveal nothing a client could not learn from the
public proto. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

import grpc

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


def _deny(message: str):
    async def abort(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return abort


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization")
        if given is None:
            message = "missing authorization metadata (expected 'Bearer <token>')"
        elif hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return await continuation(handler_call_details)
        else:
            message = "invalid bearer token"
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_deny(message), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            async def deny_stream(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                yield  # pragma: no cover - makes this an async generator

            return grpc.unary_stream_rpc_method_handler(deny_stream, handler.request_deserializer, handler.response_serializer)
        return grpc.stream_unary_rpc_method_handler(_deny(message), handler.request_deserializer, handler.response_serializer)
