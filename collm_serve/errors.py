"""Domain errors, each bound to ONE gRPC status code; the servicer maps them in one place.

Engines, the adapter registry and request validation raise these; nothing string-matches
messages. The client SDK raises the mirror-image `collm_serve.client.AgentError` subclasses.
"""

from __future__ import annotations

import grpc


class CollmError(Exception):
    """Base class: `code` is the gRPC status the server answers with."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # A cause the client can tell apart from others of the same code without reading the message:
    # sent as trailing metadata `collm-cause` (CAUSE_KEY) with the status.
    cause: str = ""


CAUSE_KEY = "collm-cause"


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
    """The engine cannot serve any more: the process reports NOT_SERVING and exits with code 3
    for its supervisor to restart it. Clients see UNAVAILABLE with cause `engine_dead`, so a
    collector reports the death, not only the refused calls after it."""

    cause = "engine_dead"

    def __init__(self, detail: str = ""):
        super().__init__("the agent's engine died; the agent exits with code 3 to be restarted "
                         "(its log has the engine's traceback)" + (f": {detail}" if detail else ""))
