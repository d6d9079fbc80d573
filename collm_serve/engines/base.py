"""The engine interface: the only thing the servicer, CLI and tests know about inference.

Value objects are validated on construction (like vLLM's `LoRARequest`) and raise
`InvalidArgument` naming the field. Engines take token ids (the servicer applies the chat
template once, so every engine sees the same prompt) and stream `ChoiceDelta`s.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from collm_serve.errors import InvalidArgument

# A tiny temperature overflows logits / temperature to inf and sampling fails (1e-45 did, on
# the tiny model). vLLM clamps anything below this bound up to it (`_MAX_TEMP` in
# vllm/sampling_params.py); we refuse instead of silently sampling another distribution.
MIN_TEMPERATURE = 1e-2
# vLLM refuses a temperature above this (vllm/sampling_params.py `_verify_args`), and so does
# OpenAI's API: refused here, naming the field, rather than as an engine error (INTERNAL).
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # EOS is not sampled before this many tokens (0 = off)

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise InvalidArgument("sampling.max_tokens", f"must be > 0, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise InvalidArgument("sampling.temperature",
                                  f"must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise InvalidArgument("sampling.temperature",
                                  f"must be 0 (greedy) or >= {MIN_TEMPERATURE}, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidArgument("sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidArgument("sampling.top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        if self.n < 1:
            raise InvalidArgument("sampling.n", f"must be >= 1, got {self.n}")
        if self.temperature == 0 and self.n > 1:
            raise InvalidArgument("sampling.n", "must be 1 with temperature 0 (greedy choices are identical)")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidArgument("sampling.seed", f"must be in [0, 2^63), got {self.seed}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidArgument("sampling.min_tokens",
                                  f"must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}")
        if any(not s for s in self.stop):
            raise InvalidArgument("sampling.stop", "stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class EngineAdapter:
    """An adapter version as the engine knows it: one engine identity per version."""

    name: str
    version: int
    path: str
    engine_id: int  # unique per (name, version) for the engine's whole life; never reused

    @property
    def engine_name(self) -> str:
        return f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    adapter: EngineAdapter | None = None  # None = base model
    # False: the caller wants the whole answer at once (unary Generate); the engine may then skip
    # per-step deltas (vLLM: RequestOutputKind.FINAL_ONLY), which costs the front end far less CPU.
    stream: bool = True
    # Streaming only: a delta once this many new tokens are ready, the first token and the last delta
    # at once (vLLM's per-request `stream_interval`; a consumer that falls behind gets them merged). Fewer deltas = less front-end CPU
    # per token: a gRPC message and a client wake-up each (bench/serve_overhead.py).
    stream_interval: int = 1

    def __post_init__(self) -> None:
        if self.stream_interval < 1:
            raise InvalidArgument("stream_interval", f"must be >= 1 (tokens per stream message), got "
                                  f"{self.stream_interval}; leave it unset for the agent's default")


@dataclass
class ChoiceDelta:
    """New tokens of one choice; `finish_reason` is set on that choice's last delta."""

    index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "abort"


class StreamInterval:
    """vLLM's `stream_interval` for an engine that produces one token per delta: merges a choice's
    deltas until `interval` new tokens, sending its first token and its last delta at once (the
    rule of vllm/v1/engine/output_processor.py, `RequestState.make_request_output`)."""

    def __init__(self, interval: int):
        self.interval = interval
        self._pending: dict[int, ChoiceDelta] = {}
        self._started: set[int] = set()

    def add(self, delta: ChoiceDelta) -> ChoiceDelta | None:
        """The delta to send now, or None while this choice's tokens are held back."""
        if self.interval <= 1:
            return delta
        held = self._pending.setdefault(delta.index, ChoiceDelta(delta.index, [], []))
        held.token_ids.extend(delta.token_ids)
        held.logprobs.extend(delta.logprobs)
        held.text += delta.text
        held.finish_reason = delta.finish_reason
        if delta.finish_reason or delta.index not in self._started or len(held.token_ids) >= self.interval:
            self._started.add(delta.index)
            return self._pending.pop(delta.index)
        return None


class ArrivalGate:
    """Lets requests that arrive together into the engine together.

    Why: a step of a CPU engine takes 0.1–1 s, and vLLM starts one as soon as the first request
    of a burst reaches it. Requests that come a few milliseconds later (a gRPC service parses,
    validates and tokenises them one by one) wait for that step, are prefilled in the next,
    and finish a step or more after the others: a tail of small batches. Measured at 32
    concurrent requests on 2 cores: the engine saw a burst spread over 0.1–1.4 s and the round
    took up to 20% longer than when the same requests arrived in one event-loop turn
    (bench/serve_overhead.py, docs/benchmarks.md). On a GPU a step is ~10 ms and this matters less.

    A request waits until no other has arrived for `quiet_s`, and at most `max_wait_s` after the
    first one that waits; then every waiting request goes on in the same event-loop turn. A lone
    request pays about `quiet_s` once (measured 4-14 ms at the 5 ms default, against generations
    of seconds). `quiet_s` 0 = no gate."""

    def __init__(self, quiet_s: float, max_wait_s: float | None = None):
        self.quiet_s = quiet_s
        self.max_wait_s = 10 * quiet_s if max_wait_s is None else max_wait_s
        self._open: asyncio.Future | None = None
        self._last = self._deadline = 0.0

    async def wait(self) -> None:
        if self.quiet_s <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._open is None:
            self._open = loop.create_future()
            self._deadline = now + self.max_wait_s
            loop.call_at(min(now + self.quiet_s, self._deadline), self._release_when_quiet)
        self._last = now
        # shield: a cancelled waiter (client gone) must not cancel the others' shared future
        await asyncio.shield(self._open)

    def _release_when_quiet(self) -> None:
        loop = asyncio.get_running_loop()
        due = min(self._last + self.quiet_s, self._deadline)
        if loop.time() < due:
            loop.call_at(due, self._release_when_quiet)
            return
        opened, self._open = self._open, None
        if opened is not None and not opened.done():
            opened.set_result(None)


@dataclass
class EngineInfo:
    engine: str
    base_model: str
    max_model_len: int
    max_lora_rank: int
    max_loras: int
    extra: dict[str, str] = field(default_factory=dict)


class Engine(ABC):
    """Async inference engine with LoRA slots. One instance per agent process."""

    name: str = "abstract"

    @abstractmethod
    async def start(self) -> None:
        """Load the model; the service reports NOT_SERVING until this returns."""

    @abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[ChoiceDelta]:
        """Stream deltas. Cancelling the consumer must abort the engine request."""

    @abstractmethod
    async def abort(self, request_id: str) -> None: ...

    @abstractmethod
    async def add_adapter(self, adapter: EngineAdapter) -> None:
        """Load weights into a slot; raise (never crash the engine) on a bad adapter."""

    @abstractmethod
    async def remove_adapter(self, adapter: EngineAdapter) -> None: ...

    @abstractmethod
    async def loaded_adapter_ids(self) -> set[int]:
        """The engine's OWN list of loaded LoRA ids (to prove unload freed the slot)."""

    @abstractmethod
    def info(self) -> EngineInfo: ...

    @abstractmethod
    async def shutdown(self) -> None: ...

    @property
    def dead(self) -> bool:
        """True once the engine cannot serve any more (the process must restart)."""
        return False


@dataclass(eq=False, repr=False, kw_only=True)
class ModelEngine(Engine):
    """An engine that loads one model from a path itself (vLLM, transformers): the options every
    such engine takes (server.py `engine_for` passes them from the agent config) and its `info`.
    Subclasses are dataclasses the same way: their own options are keyword fields, their runtime
    state is set in `__post_init__`, and `engine_label` names what runs the model."""

    model_path: str | Path = field(kw_only=False)
    model_id: str = field(kw_only=False)
    max_model_len: int = 2048
    max_loras: int = 4
    max_lora_rank: int = 16
    dtype: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        self.model_path = str(self.model_path)

    @property
    def engine_label(self) -> str:
        """`EngineInfo.engine`: what actually runs the model."""
        return self.name

    def info(self) -> EngineInfo:
        return EngineInfo(engine=self.engine_label, base_model=self.model_id, max_model_len=self.max_model_len,
                          max_lora_rank=self.max_lora_rank, max_loras=self.max_loras)
