"""The AgentService servicer: validation, admission, adapter pinning, engine streaming.

Depends only on the engine interface. Errors are domain exceptions mapped to status codes in
ONE place (`_rpc` / `_rpc_stream`); a client cancel or deadline cancels the handler task,
which aborts the engine request in the engine generator's `finally`.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc

from collm_serve import __version__
from collm_serve.adapters.registry import AdapterRegistry, LoadedVersion
from collm_serve.agent.admission import Admission
from collm_serve.config import AgentConfig
from collm_serve.engines.base import Engine, EngineRequest, SamplingParams
from collm_serve.errors import CollmError, EngineDead, InvalidArgument, Unavailable
from collm_serve.metrics import ServiceMetrics
from collm_serve.models import chat_prompt_ids
from collm_serve.proto.collm.v1 import agent_pb2 as pb
from collm_serve.proto.collm.v1 import agent_pb2_grpc
from collm_serve.rpc import outcome as rpc_outcome

log = logging.getLogger("collm.serve")

ROLES = ("system", "user", "assistant")
FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH, "abort": pb.FINISH_REASON_ABORT}
MAX_REQUEST_ID = 128
CHARS_PER_TOKEN_BOUND = 32  # refuse before tokenising text that cannot fit in max_prompt_tokens


@dataclass
class ServiceState:
    phase: str = "loading"  # loading | serving | draining
    on_engine_dead: Callable[[], None] = lambda: None
    in_flight: dict[str, float] = field(default_factory=dict)  # request_id -> start time


def adapter_ref(loaded: LoadedVersion | None) -> pb.AdapterRef:
    if loaded is None:
        return pb.AdapterRef()
    return pb.AdapterRef(name=loaded.checked.manifest.name, version=loaded.version, sha256=loaded.sha256)


def sampling_used(sp: SamplingParams) -> pb.SamplingUsed:
    """The echo of the sampling a request was served with (`_sampling`'s resolution: request +
    agent defaults). Built once per request, with its first (or only) response message."""
    return pb.SamplingUsed(
        max_tokens=sp.max_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
        seed=sp.seed, n=sp.n, stop=sp.stop, min_tokens=sp.min_tokens,
    )


def adapter_info(loaded: LoadedVersion, active: LoadedVersion | None) -> pb.AdapterInfo:
    m = loaded.checked.manifest
    return pb.AdapterInfo(
        name=m.name, version=m.version, sha256=m.sha256, base_model=m.base_model,
        rank=loaded.checked.rank, target_modules=list(loaded.checked.target_modules),
        loaded_at=loaded.loaded_at, path=str(loaded.checked.path), algorithm=m.algorithm,
        step=m.step,
        state=pb.ADAPTER_STATE_ACTIVE if loaded is active else pb.ADAPTER_STATE_LOADED,
    )


def _outcome(servicer: "AgentServicer", method: str, context: grpc.aio.ServicerContext):
    """The one error ladder of every RPC (collm_serve/rpc.py `outcome`): count, time, map domain
    errors to status codes; an EngineDead among them starts the agent's restart. Unexpected
    errors go out as INTERNAL with their type and text (the agent's callers are its own
    orchestrators and trainers)."""
    start = time.perf_counter()

    def count(code: grpc.StatusCode) -> None:
        servicer.metrics.requests.labels(servicer.agent, method, code.name).inc()
        servicer.metrics.latency.labels(servicer.agent, method).observe(time.perf_counter() - start)

    return rpc_outcome(context, method, log, count=count, on_error=servicer._engine_dead_check, internal_detail=True)


def _rpc(method: str):
    """Run a unary RPC inside the error ladder."""

    def wrap(fn):
        @functools.wraps(fn)
        async def handler(self: "AgentServicer", request, context: grpc.aio.ServicerContext):
            async with _outcome(self, method, context):
                return await fn(self, request, context)

        return handler

    return wrap


@dataclass(eq=False)  # identity, not field equality: one servicer per agent
class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """One agent's RPCs over the parts collm_serve/agent/server.py builds for it."""

    config: AgentConfig
    engine: Engine
    tokenizer: object  # set by the server once the engine has loaded the model
    registry: AdapterRegistry
    admission: Admission
    metrics: ServiceMetrics
    state: ServiceState

    def __post_init__(self) -> None:
        self.agent = self.config.name
        self._tokens_generated = self.metrics.tokens.labels(self.agent)  # one child, not a lookup per delta

    # -- helpers ---------------------------------------------------------------------------
    def _engine_dead_check(self, error: Exception) -> None:
        if isinstance(error, EngineDead) or self.engine.dead:
            self.state.on_engine_dead()

    def _require_serving(self) -> None:
        if self.state.phase == "loading":
            raise Unavailable("agent is still loading its model; retry shortly")
        if self.engine.dead:  # the cause, not "draining", while the agent exits for its restart
            raise EngineDead()
        if self.state.phase == "draining":
            raise Unavailable("agent is draining (shutting down); retry on another replica")

    def _sampling(self, request: pb.GenerateRequest) -> SamplingParams:
        """The sampling this request is served with: its fields, the agent's `sampling` defaults
        for those unset. Echoed to the caller (`sampling_used`), who records it in traces."""
        s, d, c = request.sampling, self.config.sampling, self.config
        max_tokens = s.max_tokens if s.HasField("max_tokens") else d.max_tokens
        if max_tokens > c.max_tokens_limit:
            raise InvalidArgument("sampling.max_tokens", f"{max_tokens} exceeds this agent's limit {c.max_tokens_limit}")
        n = s.n if s.HasField("n") else 1
        if n > c.max_n:
            raise InvalidArgument("sampling.n", f"{n} exceeds this agent's limit {c.max_n}")
        if len(s.stop) > 16 or any(len(x) > 256 for x in s.stop):
            raise InvalidArgument("sampling.stop", "at most 16 stop strings of at most 256 characters")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=s.temperature if s.HasField("temperature") else d.temperature,
            top_p=s.top_p if s.HasField("top_p") else d.top_p,
            top_k=s.top_k if s.HasField("top_k") else d.top_k,
            seed=s.seed if s.HasField("seed") else None,
            n=n,
            stop=tuple(s.stop),
            min_tokens=s.min_tokens if s.HasField("min_tokens") else 0,
        )

    def _prompt_ids(self, request: pb.GenerateRequest) -> list[int]:
        has_messages, has_prompt = len(request.messages) > 0, bool(request.prompt)
        if has_messages == has_prompt:
            raise InvalidArgument("messages", "give exactly one of messages (chat) or prompt (raw text)")
        limit_chars = self.config.max_prompt_tokens * CHARS_PER_TOKEN_BOUND
        if has_prompt:
            if len(request.prompt) > limit_chars:
                raise InvalidArgument("prompt", f"{len(request.prompt)} characters cannot fit in max_prompt_tokens={self.config.max_prompt_tokens}")
            ids = self.tokenizer.encode(request.prompt)
            field_name = "prompt"
        else:
            messages = []
            if self.config.system_prompt and request.messages[0].role != "system":
                messages.append({"role": "system", "content": self.config.system_prompt})
            total = 0
            for i, m in enumerate(request.messages):
                if m.role not in ROLES:
                    raise InvalidArgument(f"messages[{i}].role", f"{m.role!r} is not one of {', '.join(ROLES)}")
                if not m.content:
                    raise InvalidArgument(f"messages[{i}].content", "must not be empty")
                total += len(m.content)
                messages.append({"role": m.role, "content": m.content})
            if total > limit_chars:
                raise InvalidArgument("messages", f"{total} characters cannot fit in max_prompt_tokens={self.config.max_prompt_tokens}")
            ids = chat_prompt_ids(self.tokenizer, messages)
            field_name = "messages"
        if len(ids) > self.config.max_prompt_tokens:
            raise InvalidArgument(field_name, f"prompt has {len(ids)} tokens; max_prompt_tokens is {self.config.max_prompt_tokens}")
        return [int(t) for t in ids]

    def _prepare(self, request: pb.GenerateRequest) -> EngineRequest:
        self._require_serving()
        rid = request.request_id or uuid.uuid4().hex
        if len(rid) > MAX_REQUEST_ID or not rid.isprintable():
            raise InvalidArgument("request_id", f"must be printable and at most {MAX_REQUEST_ID} characters")
        if rid in self.state.in_flight:
            raise InvalidArgument("request_id", f"{rid!r} is already in flight")
        pinned = request.HasField("adapter_version")  # unset = the active version (agent.proto)
        if pinned and request.adapter_version < 1:
            raise InvalidArgument("adapter_version", f"{request.adapter_version} is not a version (they start at 1); "
                                  "leave it unset for the active version, or set use_base_model")
        if pinned and request.use_base_model:
            raise InvalidArgument("adapter_version", "pin a version or use_base_model, not both")
        sampling = self._sampling(request)
        ids = self._prompt_ids(request)
        if len(ids) + sampling.max_tokens > self.config.max_model_len:
            raise InvalidArgument(
                "sampling.max_tokens",
                f"prompt ({len(ids)} tokens) + max_tokens ({sampling.max_tokens}) exceeds the context ({self.config.max_model_len})",
            )
        if pinned:  # fail fast, before queueing, on an unknown pinned version
            with self.registry.acquire(request.adapter_version):
                pass
        interval = request.stream_interval if request.HasField("stream_interval") else self.config.stream_interval
        return EngineRequest(rid, ids, sampling, stream_interval=interval)  # validates the interval

    def open_stream(self, request: pb.GenerateRequest, stream: bool = True):
        """The generation path every front end shares (gRPC here, HTTP in collm_serve/agent/http_api.py):
        validation, admission, adapter pinning, engine. Yields (engine_request, selection,
        queue_ms) first, then ChoiceDeltas; raises CollmError subclasses. `stream=False`: the
        caller only wants the whole answer, so the engine may deliver it in one delta."""
        return self._stream(request, stream)

    async def _stream(self, request: pb.GenerateRequest, stream: bool):
        """Yields (engine_request, selection, queue_ms) first, then ChoiceDeltas."""
        prepared = self._prepare(request)
        queued_at = time.perf_counter()
        async with self.admission.slot():
            queue_ms = (time.perf_counter() - queued_at) * 1000
            with self.registry.acquire(request.adapter_version, request.use_base_model) as sel:
                engine_request = replace(prepared, adapter=sel.engine_adapter, stream=stream)
                self.state.in_flight[prepared.request_id] = time.time()
                try:
                    yield engine_request, sel, queue_ms
                    tokens = self._tokens_generated
                    async for delta in self.engine.generate(engine_request):
                        tokens.inc(len(delta.token_ids))
                        yield delta
                finally:
                    self.state.in_flight.pop(prepared.request_id, None)

    # -- RPCs ------------------------------------------------------------------------------
    @_rpc("Generate")
    async def Generate(self, request, context):
        stream = self._stream(request, False)
        try:
            engine_request, sel, queue_ms = await anext(stream)
            started = time.perf_counter()
            n = engine_request.sampling.n
            choices = [pb.Choice(index=i) for i in range(n)]
            texts = [[] for _ in range(n)]
            async for delta in stream:
                c = choices[delta.index]
                c.token_ids.extend(delta.token_ids)
                c.logprobs.extend(delta.logprobs)
                texts[delta.index].append(delta.text)
                if delta.finish_reason:
                    c.finish_reason = FINISH.get(delta.finish_reason, pb.FINISH_REASON_STOP)
        finally:
            await stream.aclose()
        for c, parts in zip(choices, texts):
            c.text = "".join(parts)
        return pb.GenerateResponse(
            request_id=engine_request.request_id,
            choices=choices,
            prompt_token_ids=engine_request.prompt_token_ids,
            adapter=adapter_ref(sel.loaded),
            usage=pb.Usage(
                prompt_tokens=len(engine_request.prompt_token_ids),
                completion_tokens=sum(len(c.token_ids) for c in choices),
            ),
            timings=pb.Timings(queue_ms=queue_ms, engine_ms=(time.perf_counter() - started) * 1000),
            sampling=sampling_used(engine_request.sampling),
        )

    async def GenerateStream(self, request, context):
        stream = self._stream(request, True)
        async with _outcome(self, "GenerateStream", context):
            try:
                engine_request, sel, _ = await anext(stream)
                yield pb.GenerateStreamResponse(
                    request_id=engine_request.request_id,
                    prompt_token_ids=engine_request.prompt_token_ids,
                    adapter=adapter_ref(sel.loaded),
                    sampling=sampling_used(engine_request.sampling),
                )
                completion = 0
                async for delta in stream:
                    completion += len(delta.token_ids)
                    yield pb.GenerateStreamResponse(
                        request_id=engine_request.request_id, index=delta.index, text=delta.text,
                        token_ids=delta.token_ids, logprobs=delta.logprobs,
                        finish_reason=FINISH.get(delta.finish_reason, 0) if delta.finish_reason else 0,
                    )
                yield pb.GenerateStreamResponse(
                    request_id=engine_request.request_id,
                    usage=pb.Usage(prompt_tokens=len(engine_request.prompt_token_ids), completion_tokens=completion),
                )
            finally:
                await stream.aclose()

    @_rpc("GetAgentInfo")
    async def GetAgentInfo(self, request, context):
        info = self.engine.info()
        c = self.config
        return pb.GetAgentInfoResponse(
            agent=c.name, base_model=info.base_model, engine=info.engine,
            active_adapter=adapter_ref(self.registry.active),
            limits=pb.AgentLimits(
                max_tokens=c.max_tokens_limit, max_prompt_tokens=c.max_prompt_tokens,
                max_model_len=c.max_model_len, max_concurrent_requests=c.max_concurrent_requests,
                max_queued_requests=c.max_queued_requests, max_n=c.max_n,
                max_lora_rank=c.max_lora_rank, keep_versions=c.keep_versions,
            ),
            version=__version__, state=self.state.phase,
            auth_enabled=c.auth.enabled, tls_enabled=c.tls is not None,
        )

    @_rpc("Abort")
    async def Abort(self, request, context):
        if len(request.request_ids) > 1024:
            raise InvalidArgument("request_ids", "at most 1024 ids per call")
        aborted = []
        for rid in request.request_ids:
            if rid in self.state.in_flight:
                await self.engine.abort(rid)
                aborted.append(rid)
        return pb.AbortResponse(aborted=aborted)

    # -- adapters --------------------------------------------------------------------------
    def _swap_metric(self, op: str, outcome: str) -> None:
        self.metrics.swaps.labels(self.agent, op, outcome).inc()

    @_rpc("LoadAdapter")
    async def LoadAdapter(self, request, context):
        self._require_not_loading()
        expected = request.version if request.HasField("version") else None  # unset = the manifest's
        if expected is not None and expected < 1:
            raise InvalidArgument("version", f"{expected} is not a version (they start at 1); "
                                  "leave it unset to take the manifest's")
        start = time.perf_counter()
        try:
            loaded = await self.registry.load(request.path, expected or 0, request.activate)
        except CollmError as e:
            self._swap_metric("load", e.code.name.lower())
            raise
        seconds = time.perf_counter() - start
        self._swap_metric("load", "ok")
        self.metrics.swap_latency.labels(self.agent).observe(seconds)
        active = self.registry.active
        return pb.LoadAdapterResponse(
            adapter=adapter_info(loaded, active), active=adapter_ref(active), load_ms=seconds * 1000
        )

    def _require_not_loading(self) -> None:
        if self.state.phase == "loading":
            raise Unavailable("agent is still loading its model; retry shortly")

    @_rpc("ActivateAdapter")
    async def ActivateAdapter(self, request, context):
        self._require_not_loading()
        has_version = request.HasField("version")  # exactly one target (agent.proto)
        if has_version and request.version < 1:
            raise InvalidArgument("version", f"{request.version} is not a version (they start at 1); "
                                  "set use_base_model instead to serve the base model")
        if has_version == request.use_base_model:
            raise InvalidArgument("version", "give a loaded version (>= 1) or use_base_model, exactly one")
        active, previous = await self.registry.activate(request.version, request.use_base_model)
        self._swap_metric("activate", "ok")
        return pb.ActivateAdapterResponse(active=adapter_ref(active), previous=adapter_ref(previous))

    @_rpc("RollbackAdapter")
    async def RollbackAdapter(self, request, context):
        self._require_not_loading()
        active, previous = await self.registry.rollback()
        self._swap_metric("rollback", "ok")
        return pb.RollbackAdapterResponse(active=adapter_ref(active), previous=adapter_ref(previous))

    @_rpc("UnloadAdapter")
    async def UnloadAdapter(self, request, context):
        self._require_not_loading()
        if request.version <= 0:
            raise InvalidArgument("version", "must be a loaded version > 0")
        await self.registry.unload(request.version, request.force)
        self._swap_metric("unload", "ok")
        return pb.UnloadAdapterResponse(
            active=adapter_ref(self.registry.active),
            loaded_versions=[lv.version for lv in self.registry.versions()],
        )

    @_rpc("ListAdapters")
    async def ListAdapters(self, request, context):
        active = self.registry.active
        return pb.ListAdaptersResponse(
            adapters=[adapter_info(lv, active) for lv in self.registry.versions()],
            active=adapter_ref(active),
            history=self.registry.history,
            engine_lora_ids=sorted(await self.engine.loaded_adapter_ids()),
        )
