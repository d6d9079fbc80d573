"""Client SDK for agent services: `AgentClient` (sync) and `AsyncAgentClient` (asyncio).

Errors arrive as typed exceptions carrying the gRPC status code (`InvalidArgumentError`, ...).
Only UNAVAILABLE is retried (with exponential backoff): the server never accepted the request
(connection refused, draining), so a retry cannot duplicate work. Everything else surfaces.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from collm_serve.errors import CAUSE_KEY, EngineDead
from collm_serve.proto.collm.v1 import agent_pb2 as pb
from collm_serve.proto.collm.v1 import agent_pb2_grpc
from collm_serve.traces.records import SamplingRecord

# -- errors -------------------------------------------------------------------------------


class AgentError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(AgentError): ...
class NotFoundError(AgentError): ...
class FailedPreconditionError(AgentError): ...
class PermissionDeniedError(AgentError): ...
class UnauthenticatedError(AgentError): ...
class ResourceExhaustedError(AgentError): ...
class UnavailableError(AgentError): ...
class EngineDeadError(UnavailableError):
    """UNAVAILABLE because the agent's engine died (cause `engine_dead`): it exits with code 3."""
class DeadlineExceededError(AgentError): ...
class CancelledError(AgentError): ...


_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


_CAUSES = {(grpc.StatusCode.UNAVAILABLE, EngineDead.cause): EngineDeadError}  # (code, collm-cause)


def error_from_rpc(e: grpc.RpcError) -> AgentError:
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    trailing = e.trailing_metadata() if callable(getattr(e, "trailing_metadata", None)) else None
    cause = dict(trailing or ()).get(CAUSE_KEY, "")
    cls = _CAUSES.get((code, cause)) or _ERRORS.get(code, AgentError)
    return cls(code, e.details() or "")


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterRef:
    name: str
    version: int
    sha256: str

    @property
    def is_base(self) -> bool:
        return self.version == 0

    def __str__(self) -> str:
        return "base" if self.is_base else f"{self.name}@v{self.version} ({self.sha256[:12]})"

    @classmethod
    def from_pb(cls, ref: pb.AdapterRef) -> "AdapterRef":
        return cls(ref.name, ref.version, ref.sha256)


@dataclass
class ChoiceOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


@dataclass
class GenerateOutput:
    request_id: str
    choices: list[ChoiceOutput]
    prompt_token_ids: list[int]
    adapter: AdapterRef
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float = 0.0
    engine_ms: float = 0.0
    # the sampling the service ACTUALLY used (request + its defaults); None from a service
    # older than the echo. This, not the request, is what a trace records.
    sampling: SamplingRecord | None = None
    raw: Any = field(default=None, repr=False)

    # the single-choice view
    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.choices[0].token_ids

    @property
    def logprobs(self) -> list[float]:
        return self.choices[0].logprobs

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason


_FINISH_NAMES = {v: k.removeprefix("FINISH_REASON_").lower() for k, v in pb.FinishReason.items()}


def sampling_from_pb(msg: pb.GenerateResponse | pb.GenerateStreamResponse) -> SamplingRecord | None:
    """The echoed `sampling` of a response (or of a stream's first chunk); None if absent."""
    if not msg.HasField("sampling"):
        return None
    s = msg.sampling
    return SamplingRecord(
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens,
        min_tokens=s.min_tokens, seed=s.seed if s.HasField("seed") else None, n=s.n,
        stop=tuple(s.stop),
    )


def output_from_pb(r: pb.GenerateResponse) -> GenerateOutput:
    return GenerateOutput(
        request_id=r.request_id,
        choices=[
            ChoiceOutput(c.index, c.text, list(c.token_ids), list(c.logprobs), _FINISH_NAMES[c.finish_reason])
            for c in r.choices
        ],
        prompt_token_ids=list(r.prompt_token_ids),
        adapter=AdapterRef.from_pb(r.adapter),
        prompt_tokens=r.usage.prompt_tokens,
        completion_tokens=r.usage.completion_tokens,
        queue_ms=r.timings.queue_ms,
        engine_ms=r.timings.engine_ms,
        sampling=sampling_from_pb(r),
        raw=r,
    )


def build_request(
    messages: list[dict[str, str]] | None = None,
    prompt: str | None = None,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    n: int | None = None,
    stop: list[str] | None = None,
    min_tokens: int | None = None,
    adapter_version: int | None = None,
    use_base_model: bool = False,
    request_id: str | None = None,
    stream_interval: int | None = None,
) -> pb.GenerateRequest:
    """adapter_version None: the active version; N >= 1 pins loaded version N; use_base_model: no
    adapter (agent.proto, GenerateRequest). stream_interval: tokens per GenerateStream message
    (None: the agent's default). None leaves the proto3-optional field unset."""
    sampling = pb.SamplingParams(stop=stop or [])
    for name, value in (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p),
                        ("top_k", top_k), ("seed", seed), ("n", n), ("min_tokens", min_tokens)):
        if value is not None:
            setattr(sampling, name, value)
    return pb.GenerateRequest(
        request_id=request_id or uuid.uuid4().hex,
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages or []],
        prompt=prompt or "",
        sampling=sampling,
        adapter_version=adapter_version,
        use_base_model=use_base_model,
        stream_interval=stream_interval,
    )


# -- channel set-up -------------------------------------------------------------------------


@dataclass
class ChannelOptions:
    token: str | None = None
    root_certificates: str | Path | None = None  # CA of the server (enables TLS)
    client_cert: str | Path | None = None  # mTLS
    client_key: str | Path | None = None
    server_name: str | None = None  # override the TLS host name check (tests, IPs)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.root_certificates is None:
            return None
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.root_certificates),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )

    def channel_args(self) -> list[tuple[str, Any]]:
        args = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
        if self.server_name:
            args.append(("grpc.ssl_target_name_override", self.server_name))
        return args

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _backoff(attempt: int, base: float) -> float:
    return base * (2**attempt) * (0.5 + random.random())


# -- sync -----------------------------------------------------------------------------------


class _ClientBase:
    """Channel set-up shared by the sync and asyncio clients (`grpc` or `grpc.aio` module)."""

    _grpc = grpc

    def __init__(
        self, address: str, *, timeout: float | None = 120.0, retries: int = 3,
        backoff: float = 0.2, token: str | None = None, root_certificates=None,
        client_cert=None, client_key=None, server_name: str | None = None,
    ):
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._opts = ChannelOptions(token, root_certificates, client_cert, client_key, server_name)
        creds = self._opts.credentials()
        args = self._opts.channel_args()
        self.channel = (self._grpc.secure_channel(address, creds, args) if creds
                        else self._grpc.insecure_channel(address, args))
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)


class AgentClient(_ClientBase):
    """Blocking client. `timeout` is the default per-call deadline in seconds."""

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request, timeout: float | None = None, retry: bool = True):
        fn = getattr(self.stub, method)
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                return fn(request, timeout=timeout or self.timeout, metadata=self._opts.metadata())
            except grpc.RpcError as e:
                err = error_from_rpc(e)
                if isinstance(err, UnavailableError) and attempt + 1 < attempts:
                    time.sleep(_backoff(attempt, self.backoff))
                    continue
                raise err from None

    def generate(self, messages=None, prompt=None, *, timeout: float | None = None, **kw) -> GenerateOutput:
        return output_from_pb(self._call("Generate", build_request(messages, prompt, **kw), timeout))

    def generate_stream(self, messages=None, prompt=None, *, timeout: float | None = None, **kw):
        """Yields raw `GenerateStreamResponse` chunks (first: prompt ids, adapter and the sampling
        used, `sampling_from_pb(chunk)`; last: usage)."""
        request = build_request(messages, prompt, **kw)
        try:
            yield from self.stub.GenerateStream(request, timeout=timeout or self.timeout, metadata=self._opts.metadata())
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def info(self) -> pb.GetAgentInfoResponse:
        return self._call("GetAgentInfo", pb.GetAgentInfoRequest())

    def abort(self, request_ids: list[str]) -> list[str]:
        return list(self._call("Abort", pb.AbortRequest(request_ids=request_ids)).aborted)

    def load_adapter(self, path: str | Path, version: int | None = None, activate: bool = True) -> pb.LoadAdapterResponse:
        """version None: the manifest's; N: refused unless the manifest says N."""
        return self._call("LoadAdapter", pb.LoadAdapterRequest(path=str(path), version=version, activate=activate))

    def activate_adapter(self, version: int | None = None, use_base_model: bool = False) -> pb.ActivateAdapterResponse:
        """Exactly one target: a loaded `version` (>= 1) or `use_base_model=True`."""
        return self._call("ActivateAdapter", pb.ActivateAdapterRequest(version=version, use_base_model=use_base_model))

    def rollback_adapter(self) -> pb.RollbackAdapterResponse:
        return self._call("RollbackAdapter", pb.RollbackAdapterRequest())

    def unload_adapter(self, version: int, force: bool = False) -> pb.UnloadAdapterResponse:
        return self._call("UnloadAdapter", pb.UnloadAdapterRequest(version=version, force=force))

    def list_adapters(self) -> pb.ListAdaptersResponse:
        return self._call("ListAdapters", pb.ListAdaptersRequest())

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the health service reports SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"{self.address} not serving after {timeout}s")
            time.sleep(0.5)


# -- asyncio --------------------------------------------------------------------------------


class AsyncAgentClient(_ClientBase):
    """asyncio client with the same methods as `AgentClient` (awaitable)."""

    _grpc = grpc.aio

    async def __aenter__(self) -> "AsyncAgentClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, method: str, request, timeout: float | None = None, retry: bool = True):
        fn = getattr(self.stub, method)
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                return await fn(request, timeout=timeout or self.timeout, metadata=self._opts.metadata())
            except grpc.RpcError as e:
                err = error_from_rpc(e)
                if isinstance(err, UnavailableError) and attempt + 1 < attempts:
                    await asyncio.sleep(_backoff(attempt, self.backoff))
                    continue
                raise err from None

    async def generate(self, messages=None, prompt=None, *, timeout: float | None = None, **kw) -> GenerateOutput:
        return output_from_pb(await self._call("Generate", build_request(messages, prompt, **kw), timeout))

    async def generate_stream(self, messages=None, prompt=None, *, timeout: float | None = None, **kw):
        call = self.stub.GenerateStream(build_request(messages, prompt, **kw), timeout=timeout or self.timeout,
                                        metadata=self._opts.metadata())
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    async def info(self) -> pb.GetAgentInfoResponse:
        return await self._call("GetAgentInfo", pb.GetAgentInfoRequest())

    async def abort(self, request_ids: list[str]) -> list[str]:
        return list((await self._call("Abort", pb.AbortRequest(request_ids=request_ids))).aborted)

    async def load_adapter(self, path: str | Path, version: int | None = None, activate: bool = True):
        return await self._call("LoadAdapter", pb.LoadAdapterRequest(path=str(path), version=version, activate=activate))

    async def activate_adapter(self, version: int | None = None, use_base_model: bool = False):
        return await self._call("ActivateAdapter", pb.ActivateAdapterRequest(version=version, use_base_model=use_base_model))

    async def rollback_adapter(self):
        return await self._call("RollbackAdapter", pb.RollbackAdapterRequest())

    async def unload_adapter(self, version: int, force: bool = False):
        return await self._call("UnloadAdapter", pb.UnloadAdapterRequest(version=version, force=force))

    async def list_adapters(self):
        return await self._call("ListAdapters", pb.ListAdaptersRequest())
