"""Domain errors, each bound to ONE gRPC status code; the servicer maps them in one place.

Engines, the adapter registry and request validation raise these; nothing string-matches
messages. The client SDK raises the mirror-image `collm_serve.client.AgentError` subclasses.
"""

from __future__ import annotations

import grpc


class CollmError(Exception):
    """Base class: `code` is the gRPC status the server answers with."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(CollmError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(CollmError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(CollmError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(CollmError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(CollmError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(CollmError):
    code = grpc.StatusCode.UNAVAILABLE


class EngineDead(Unavailable):
    """The engine cannot serve any more: the process reports NOT_SERVING and must restart."""
