"""OpenAI-compatible HTTP endpoint of an agent, beside its gRPC port (`http_port`, off by default).

Routes: `POST /v1/chat/completions` and `POST /v1/completions` (JSON, or Server-Sent Events with
`"stream": true`), `GET /v1/models`, `GET /health`. Field names and error bodies follow vLLM's
OpenAI server (vllm/entrypoints/openai/chat_completion/protocol.py, completion/protocol.py,
serve/engine/protocol.py `ErrorResponse`), so the `openai` SDK, LangChain or lm-eval can call an
agent without knowing it is one.

Nothing is generated a second way: a request becomes the `GenerateRequest` the gRPC service takes
and runs through `AgentServicer.open_stream` — the same validation (`_prepare`: sampling, prompt
limits, pinned version), admission queue (`Admission`), adapter selection and engine. The same
`AuthPolicy` guards it (the inference role: this endpoint only generates and lists), and the
same TLS files serve HTTPS (mTLS identities map to roles as on gRPC).

`model` names what serves the request: the agent's name (its active adapter), `NAME@vN` (a
pinned loaded version) or `NAME@base` (no adapter). The answer says what served it in the
extension field `collm`: `{"adapter": {"name", "version", "sha256"} | null, "base_model", ...}`.
Errors: `{"error": {"message", "type", "param", "code"}}` with the HTTP status of the domain
error's gRPC code (`HTTP_STATUS`): 400 naming the field, 401/403, 404 unknown model or
version, 429 queue full, 503 loading or draining.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from collm_serve.config_errors import first_error
from collm_serve.errors import CollmError, InvalidArgument, NotFound
from collm_serve.proto.collm.v1 import agent_pb2 as pb

log = logging.getLogger("collm.serve.http")

# gRPC status -> (HTTP status, vLLM's error type name)
HTTP_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "BadRequestError"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "BadRequestError"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "AuthenticationError"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "PermissionDeniedError"),
    grpc.StatusCode.NOT_FOUND: (404, "NotFoundError"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "RateLimitError"),
    grpc.StatusCode.INTERNAL: (500, "InternalServerError"),
    grpc.StatusCode.UNAVAILABLE: (503, "ServiceUnavailableError"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "GatewayTimeoutError"),
}
# The methods whose role the HTTP routes need (collm_serve.auth.required_role).
GENERATE_METHOD = "/collm.v1.AgentService/Generate"
INFO_METHOD = "/collm.v1.AgentService/GetAgentInfo"
BASE_SUFFIX = "@base"


class HTTPError(Exception):
    def __init__(self, status: int, err_type: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.err_type, self.param = status, err_type, param


def bad_request(param: str, message: str) -> HTTPError:
    """400 BadRequestError naming the field, OpenAI style: `param: message`."""
    return HTTPError(400, "BadRequestError", f"{param}: {message}", param)


def error_response(status: int, err_type: str, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return web.json_response(body, status=status)


# ---------------------------------------------------------------------------- requests


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ContentPart(_Body):
    type: str
    text: str | None = None


class Message(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class _GenerationBody(_Body):
    """Fields both endpoints share (OpenAI's, plus vLLM's extensions top_k, min_tokens,
    request_id, return_token_ids)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_tokens: int | None = None
    n: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    request_id: str | None = None
    return_token_ids: bool = False
    user: str | None = None
    # accepted only with their neutral value (`NEUTRAL`): refusing beats silently ignoring
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class ChatCompletionBody(_GenerationBody):
    messages: list[Message]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None


class CompletionBody(_GenerationBody):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False), "response_format": (None, {"type": "text"}),
    "echo": (False,), "suffix": (None, ""),
}


def parse_body(raw: bytes, model: type[_Body]) -> _Body:
    try:
        body = model.model_validate_json(raw)
    except ValidationError as e:
        where, message, kind = first_error(e, model)  # the one formatter (collm_serve/config_errors.py)
        if kind == "json_invalid":
            raise HTTPError(400, "BadRequestError", f"request body is not valid JSON: {e.errors()[0]['msg']}") from None
        raise HTTPError(400, "BadRequestError", f"{where}: {message}" if where else message, where or None) from None
    for name, neutral in NEUTRAL.items():
        if name not in type(body).model_fields:
            continue
        value = getattr(body, name)
        if value not in neutral:
            raise bad_request(name, f"{value!r} is not supported by this server (collm); omit it or use "
                                    f"{neutral[-1]!r}")
    return body


# ---------------------------------------------------------------------------- the endpoint


class OpenAIEndpoint:
    """The aiohttp application of one agent; `servicer` is its `AgentServicer`."""

    def __init__(self, servicer):
        self.servicer = servicer
        self.config = servicer.config
        self.agent = servicer.agent
        self.created = int(time.time())
        self.app = web.Application(client_max_size=16 << 20, middlewares=[self._errors])
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/health", self.health)
        self._runner: web.AppRunner | None = None

    # -- life cycle ---------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (0 picks a free one). Raises OSError when it cannot."""
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     handler_cancellation=True)  # a client that hangs up aborts its request
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl_context(), reuse_port=False)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        return site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            ctx.load_verify_locations(tls.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    # -- cross-cutting: errors, auth, metrics ---------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except HTTPError as e:
            return error_response(e.status, e.err_type, str(e), e.param)
        except web.HTTPRequestEntityTooLarge as e:
            return error_response(413, "RequestEntityTooLargeError", e.text or "request body too large")
        except web.HTTPException as e:  # unknown route, wrong method
            if e.status < 400:
                raise
            return error_response(e.status, e.reason.replace(" ", "") + "Error", f"{request.method} {request.path}: {e.reason}")

    def _authorize(self, request: web.Request, method: str) -> None:
        policy = self.config.auth
        if not policy.enabled:
            return
        metadata = [("authorization", request.headers["Authorization"])] if "Authorization" in request.headers else []
        refused = policy.check(method, metadata, _peer_identities(request))
        if refused is not None:
            status, err_type = HTTP_STATUS[refused[0]]
            raise HTTPError(status, err_type, refused[1])

    def _count(self, route: str, code: grpc.StatusCode, start: float) -> None:
        m = self.servicer.metrics
        m.requests.labels(self.agent, route, code.name).inc()
        m.latency.labels(self.agent, route).observe(time.perf_counter() - start)

    def _domain_error(self, e: CollmError, aliases: dict[str, str], model: str = "") -> HTTPError:
        self.servicer._engine_dead_check(e)
        status, err_type = HTTP_STATUS.get(e.code, (500, "InternalServerError"))
        param, message = None, str(e)
        if isinstance(e, InvalidArgument):
            field = e.field.removeprefix("sampling.")
            param = aliases.get(field, field)
            message = f"{param}: {message.split(': ', 1)[1]}"
        elif isinstance(e, NotFound) and "version" in message:  # a pinned version that is not loaded
            param, message = "model", f"The model `{model}` does not exist: {message}"
        return HTTPError(status, err_type, message, param)

    # -- /v1/models, /health ---------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        phase = self.servicer.state.phase
        return web.json_response({"status": phase}, status=200 if phase == "serving" else 503)

    async def models(self, request: web.Request) -> web.Response:
        self._authorize(request, INFO_METHOD)
        registry = self.servicer.registry
        base = self.servicer.engine.info().base_model
        max_len = self.config.max_model_len

        def card(model_id: str, parent: str | None, adapter) -> dict:
            return {"id": model_id, "object": "model", "created": self.created, "owned_by": "collm",
                    "root": base, "parent": parent, "max_model_len": max_len,
                    "collm": {"adapter": _adapter_json(adapter), "base_model": base}}

        active = registry.active
        data = [card(self.agent, None, _ref(active)), card(self.agent + BASE_SUFFIX, self.agent, None)]
        data += [card(f"{self.agent}@v{lv.version}", self.agent, _ref(lv)) for lv in registry.versions()]
        return web.json_response({"object": "list", "data": data})

    # -- generation --------------------------------------------------------------------
    def _selector(self, model: str) -> tuple[int | None, bool]:
        """`model` -> (adapter_version, use_base_model) of GenerateRequest: None leaves the version
        unset (the active one, agent.proto); unknown names are 404 naming `model`."""
        if model == self.agent:
            return None, False
        if model == self.agent + BASE_SUFFIX:
            return None, True
        prefix = self.agent + "@v"
        if model.startswith(prefix) and model[len(prefix):].isdigit() and int(model[len(prefix):]) > 0:
            return int(model[len(prefix):]), False
        raise HTTPError(404, "NotFoundError",
                        f"The model `{model}` does not exist. This agent serves `{self.agent}` (its active "
                        f"adapter), `{self.agent}@vN` (a loaded version) and `{self.agent}{BASE_SUFFIX}`; "
                        "GET /v1/models lists them", "model")

    def _grpc_request(self, body: _GenerationBody, max_tokens: int | None, rid: str) -> pb.GenerateRequest:
        version, base = self._selector(body.model)
        sampling = pb.SamplingParams()
        for name, value in (("max_tokens", max_tokens), ("temperature", body.temperature), ("top_p", body.top_p),
                            ("top_k", body.top_k), ("seed", body.seed), ("n", body.n),
                            ("min_tokens", body.min_tokens)):
            if value is not None:
                try:
                    setattr(sampling, name, value)
                except (ValueError, TypeError) as e:  # out of the wire type's range
                    raise bad_request(name, str(e)) from None
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        sampling.stop.extend(stops)
        return pb.GenerateRequest(request_id=rid, sampling=sampling, adapter_version=version,
                                  use_base_model=base)

    async def _read_generation(self, request: web.Request, model: type[_GenerationBody], rid_prefix: str
                               ) -> tuple[_GenerationBody, str]:
        """(the authorized, parsed body, its request id: the client's or a fresh one)."""
        self._authorize(request, GENERATE_METHOD)
        body = parse_body(await request.read(), model)
        return body, body.request_id or f"{rid_prefix}-{uuid.uuid4().hex}"

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body, rid = await self._read_generation(request, ChatCompletionBody, "chatcmpl")
        if body.top_logprobs:
            raise bad_request("top_logprobs", "only 0 is supported (the sampled token's log-prob is returned "
                                              "with logprobs: true)")
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs", "needs logprobs: true")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        req = self._grpc_request(body, max_tokens, rid)
        for i, m in enumerate(body.messages):
            req.messages.add(role="system" if m.role == "developer" else m.role, content=_text(m.content, i))
        aliases = {"max_tokens": "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
                   "adapter_version": "model", "request_id": "request_id"}
        return await self._generate(request, body, req, aliases, chat=True, logprobs=body.logprobs)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body, rid = await self._read_generation(request, CompletionBody, "cmpl")
        if body.logprobs:
            raise bad_request("logprobs", "only 0 is supported (the sampled token's log-prob); top alternatives "
                                          "are not returned")
        if body.best_of is not None and body.best_of != (body.n or 1):
            raise bad_request("best_of", "only best_of = n is supported")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise bad_request("prompt", "give one prompt per request (a string)")
            prompt = prompt[0]
        req = self._grpc_request(body, body.max_tokens, rid)
        req.prompt = prompt
        aliases = {"messages": "prompt", "adapter_version": "model"}
        return await self._generate(request, body, req, aliases, chat=False, logprobs=body.logprobs is not None)

    async def _generate(self, request: web.Request, body: _GenerationBody, req: pb.GenerateRequest,
                        aliases: dict[str, str], *, chat: bool, logprobs: bool) -> web.StreamResponse:
        route = "http:" + request.path
        start = time.perf_counter()
        outcome = {"code": grpc.StatusCode.OK}
        stream = self.servicer.open_stream(req, stream=body.stream)
        try:
            try:  # validation, admission and adapter selection happen here: errors are still HTTP statuses
                engine_request, sel, queue_ms = await anext(stream)
                shape = _Shape(self, body, engine_request, sel, chat, logprobs, queue_ms)
                if body.stream:
                    return await self._sse(request, shape, stream, outcome)
                async for delta in stream:
                    shape.add(delta)
                return web.json_response(shape.response())
            except CollmError as e:
                outcome["code"] = e.code
                raise self._domain_error(e, aliases, body.model) from None
        except asyncio.CancelledError:  # the client hung up: the engine request is aborted below
            outcome["code"] = grpc.StatusCode.CANCELLED
            raise
        except HTTPError:
            raise
        except Exception as e:  # unexpected: 500 with the reason, logged (as gRPC's INTERNAL)
            log.exception("%s failed", route)
            outcome["code"] = grpc.StatusCode.INTERNAL
            raise HTTPError(500, "InternalServerError", f"{type(e).__name__}: {e}") from None
        finally:
            await stream.aclose()
            self._count(route, outcome["code"], start)

    async def _sse(self, request: web.Request, shape: "_Shape", stream: AsyncIterator,
                   outcome: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj: dict | str) -> None:
            await resp.write(f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode())

        for chunk in shape.first_chunks():
            await send(chunk)
        try:
            async for delta in stream:
                await send(shape.chunk(delta))
            if shape.include_usage:
                await send(shape.usage_chunk())
        except CollmError as e:  # headers are out: the error goes in the stream, as vLLM does
            outcome["code"] = e.code
            http = self._domain_error(e, {}, shape.body.model)
            await send({"error": {"message": str(http), "type": http.err_type, "param": http.param,
                                  "code": http.status}})
        except ConnectionResetError:  # the client hung up between chunks
            outcome["code"] = grpc.StatusCode.CANCELLED
            return resp
        await send("[DONE]")
        await resp.write_eof()
        return resp


class _Shape:
    """Builds the OpenAI JSON of one request (whole answer or SSE chunks) from engine deltas."""

    def __init__(self, ep: OpenAIEndpoint, body: _GenerationBody, engine_request, sel, chat: bool,
                 logprobs: bool, queue_ms: float):
        self.ep, self.body, self.chat, self.logprobs = ep, body, chat, logprobs
        self.rid = engine_request.request_id
        self.prompt_ids = list(engine_request.prompt_token_ids)
        self.n = engine_request.sampling.n
        self.texts = [[] for _ in range(self.n)]
        self.ids = [[] for _ in range(self.n)]
        self.lps = [[] for _ in range(self.n)]
        self.finish = [None] * self.n
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        info = ep.servicer.engine.info()
        self.extension = {"adapter": _adapter_json(_ref(sel.loaded)), "base_model": info.base_model,
                          "request_id": self.rid, "queue_ms": round(queue_ms, 3)}
        self.object = "chat.completion" if chat else "text_completion"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.body.model}

    def _logprobs(self, ids: list[int], lps: list[float], offset: int = 0) -> dict | None:
        if not self.logprobs:
            return None
        tok = self.ep.servicer.tokenizer
        tokens = [tok.decode([t]) for t in ids]
        if self.chat:
            return {"content": [{"token": s, "logprob": lp, "bytes": list(s.encode()), "top_logprobs": []}
                                for s, lp in zip(tokens, lps)]}
        offsets, at = [], offset
        for s in tokens:
            offsets.append(at)
            at += len(s)
        return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": [{s: lp} for s, lp in zip(tokens, lps)],
                "text_offset": offsets}

    def _usage(self) -> dict:
        completion = sum(len(x) for x in self.ids)
        return {"prompt_tokens": len(self.prompt_ids), "completion_tokens": completion,
                "total_tokens": len(self.prompt_ids) + completion}

    def add(self, delta) -> None:
        i = delta.index
        self.texts[i].append(delta.text)
        self.ids[i].extend(delta.token_ids)
        self.lps[i].extend(delta.logprobs)
        if delta.finish_reason:
            self.finish[i] = delta.finish_reason

    def response(self) -> dict:
        choices = []
        for i in range(self.n):
            text = "".join(self.texts[i])
            c: dict[str, Any] = {"index": i}
            if self.chat:
                c["message"] = {"role": "assistant", "content": text}
            else:
                c["text"] = text
            c.update(logprobs=self._logprobs(self.ids[i], self.lps[i]), finish_reason=self.finish[i], stop_reason=None)
            if self.body.return_token_ids:
                c["token_ids"] = self.ids[i]
            choices.append(c)
        out = {**self._head(self.object), "choices": choices, "usage": self._usage(), "collm": self.extension}
        if self.body.return_token_ids:
            out["prompt_token_ids"] = self.prompt_ids
        return out

    def first_chunks(self) -> list[dict]:
        """Chat: one chunk per choice with the role (as OpenAI and vLLM send); the first chunk
        carries the `collm` extension (adapter that serves the request)."""
        if not self.chat:
            return []
        chunks = [{**self._head("chat.completion.chunk"),
                   "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}]} for i in range(self.n)]
        chunks[0]["collm"] = self.extension
        if self.body.return_token_ids:
            chunks[0]["prompt_token_ids"] = self.prompt_ids
        return chunks

    def chunk(self, delta) -> dict:
        i = delta.index
        offset = sum(len(t) for t in self.texts[i])
        first = not self.chat and not any(self.ids) and not any(self.texts)
        self.add(delta)
        c: dict[str, Any] = {"index": i}
        if self.chat:
            c["delta"] = {"content": delta.text}
        else:
            c["text"] = delta.text
        c.update(logprobs=self._logprobs(delta.token_ids, delta.logprobs, offset),
                 finish_reason=delta.finish_reason, stop_reason=None)
        if self.body.return_token_ids:
            c["token_ids"] = list(delta.token_ids)
        out = {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [c]}
        if first:
            out["collm"] = self.extension
        return out

    def usage_chunk(self) -> dict:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": self._usage(), "collm": self.extension}


# ---------------------------------------------------------------------------- helpers


def _text(content: str | list[ContentPart] | None, i: int) -> str:
    """A message's text: a string, or text parts joined by newlines (as vLLM joins them)."""
    if content is None:
        raise bad_request(f"messages[{i}].content", "must be text")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise HTTPError(400, "BadRequestError", f"messages[{i}].content[{j}]: only text parts are supported "
                                                    f"(got type {part.type!r})", f"messages[{i}].content")
        texts.append(part.text)
    return "\n".join(texts)


def _ref(loaded) -> pb.AdapterRef | None:
    from collm_serve.agent.service import adapter_ref

    return None if loaded is None else adapter_ref(loaded)


def _adapter_json(ref: pb.AdapterRef | None) -> dict | None:
    return None if ref is None else {"name": ref.name, "version": ref.version, "sha256": ref.sha256}


def _peer_identities(request: web.Request) -> dict[str, list[str]]:
    """Client certificate names (mTLS), in the shape of gRPC's auth context (collm_serve.auth)."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return {}
    common = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    alt = [v for _, v in cert.get("subjectAltName", ())]
    return {"x509_common_name": common, "x509_subject_alternative_name": alt}

