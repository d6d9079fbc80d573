"""Pure PyTorch engine: transformers + peft, one request at a time, exact behaviour log-probs.

For machines without vLLM, and as the reference that checks vLLM. Samples token by token from
`process_logits` (the same function the trainer's teacher forcing uses), so its log-probs are
those of the distribution actually sampled from. No continuous batching: requests run one at a
time on a single worker thread (n choices of one request run as one batch), which also makes
adapter switching (`set_adapter`) race-free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

from collm_serve.engines.base import ChoiceDelta, EngineAdapter, EngineRequest, ModelEngine, StreamInterval
from collm_serve.errors import FailedPrecondition

_DONE = object()


@dataclass(eq=False, repr=False, kw_only=True)
class TransformersEngine(ModelEngine):
    name = "transformers"

    dtype: str = "float32"
    device: str = "cpu"
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collm-hf")
        self._cancel: dict[str, threading.Event] = {}
        self._loaded: dict[int, str] = {}  # engine_id -> peft adapter name
        self.model = None
        self.tokenizer = None

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(self.seed)
        if self.cpu_threads:  # measured: 2 threads on 2 busy cores are 5x slower than 1 (OMP spinning)
            torch.set_num_threads(self.cpu_threads)
        dtype = torch.float32 if self.dtype in ("auto", "float32") else getattr(torch, self.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        self.model = model.to(self.device).eval()
        eos = set()
        for source in (self.model.config, getattr(self.model, "generation_config", None)):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            eos.update(value if isinstance(value, list) else [value] if value is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self._eos = eos

    # -- generation -------------------------------------------------------------------------
    async def generate(self, request: EngineRequest) -> AsyncIterator[ChoiceDelta]:
        if self.model is None:
            raise FailedPrecondition("engine not started")
        if request.adapter is not None and request.adapter.engine_id not in self._loaded:
            raise FailedPrecondition(f"adapter {request.adapter.engine_name} is not loaded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        self._cancel[request.request_id] = cancel

        def emit(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(self._worker, self._run, request, emit, cancel)
        interval = StreamInterval(request.stream_interval if request.stream else 1)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                if (delta := interval.add(item)) is not None:
                    yield delta
            await future
        finally:
            cancel.set()  # the worker stops at its next token if the consumer went away
            self._cancel.pop(request.request_id, None)

    def _run(self, request: EngineRequest, emit, cancel: threading.Event) -> None:
        try:
            self._sample(request, emit, cancel)
            emit(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            emit(e)

    def _sample(self, request: EngineRequest, emit, cancel: threading.Event) -> None:
        import torch

        from collm_serve.sampling import process_logits

        sp = request.sampling
        n = sp.n
        generator = torch.Generator(device="cpu")
        generator.manual_seed(sp.seed if sp.seed is not None else torch.seed() % (2**63))
        if request.adapter is None:
            ctx = self.model.disable_adapter() if self._loaded else nullcontext()
        else:
            self.model.set_adapter(self._loaded[request.adapter.engine_id])
            ctx = nullcontext()
        ids = torch.tensor([request.prompt_token_ids] * n, device=self.device)
        out_ids: list[list[int]] = [[] for _ in range(n)]
        texts = [""] * n
        done = [False] * n
        past = None
        eos_ids = torch.tensor(sorted(t for t in self._eos if t < self.model.config.vocab_size), dtype=torch.long)
        with ctx, torch.inference_mode():
            for step in range(sp.max_tokens):
                if cancel.is_set():
                    for i in range(n):
                        if not done[i]:
                            emit(ChoiceDelta(i, [], [], "", "abort"))
                    return
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float()  # (n, V)
                if step < sp.min_tokens:  # as vLLM's min_tokens: EOS cannot be sampled yet
                    logits[:, eos_ids] = float("-inf")
                if sp.greedy:
                    logp = torch.log_softmax(logits, dim=-1)
                    next_ids = logits.argmax(dim=-1)
                else:
                    processed = process_logits(logits, sp.temperature, sp.top_k, sp.top_p)
                    logp = torch.log_softmax(processed, dim=-1)
                    next_ids = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
                chosen = logp.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)  # (n,)
                for i in range(n):
                    if done[i]:
                        continue
                    tok = int(next_ids[i])
                    out_ids[i].append(tok)
                    full = self.tokenizer.decode(out_ids[i], skip_special_tokens=True)
                    reason = None
                    if tok in self._eos:
                        reason = "stop"
                    else:
                        for s in sp.stop:
                            cut = full.find(s)
                            if cut >= 0:
                                full, reason = full[:cut], "stop"
                                break
                    if reason is None and len(out_ids[i]) >= sp.max_tokens:
                        reason = "length"
                    delta = full[len(texts[i]):] if full.startswith(texts[i]) else full
                    texts[i] = full
                    emit(ChoiceDelta(i, [tok], [float(chosen[i])], delta, reason))
                    done[i] = reason is not None
                if all(done):
                    return
                ids = next_ids.unsqueeze(-1)

    async def abort(self, request_id: str) -> None:
        event = self._cancel.get(request_id)
        if event is not None:
            event.set()

    # -- adapters ---------------------------------------------------------------------------
    async def add_adapter(self, adapter: EngineAdapter) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._add, adapter)

    def _add(self, adapter: EngineAdapter) -> None:
        from peft import PeftModel

        if len(self._loaded) >= self.max_loras:
            raise FailedPrecondition(f"all {self.max_loras} adapter slots are in use")
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter.path, adapter_name=adapter.engine_name)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, adapter.path, adapter_name=adapter.engine_name
                ).eval()
        except Exception as e:
            raise FailedPrecondition(f"engine refused adapter {adapter.engine_name}: {e}") from e
        self._loaded[adapter.engine_id] = adapter.engine_name

    async def remove_adapter(self, adapter: EngineAdapter) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._remove, adapter)

    def _remove(self, adapter: EngineAdapter) -> None:
        name = self._loaded.pop(adapter.engine_id, None)
        if name is None:
            return
        if self._loaded:
            # peft refuses to delete the active adapter: make another one active first
            self.model.set_adapter(next(iter(self._loaded.values())))
            self.model.delete_adapter(name)
        else:  # last adapter: drop the peft wrapper entirely
            self.model = self.model.unload()

    async def loaded_adapter_ids(self) -> set[int]:
        def engine_view() -> set[int]:
            names = set(getattr(self.model, "peft_config", {}) or {})
            return {i for i, n in self._loaded.items() if n in names}

        return await asyncio.get_running_loop().run_in_executor(self._worker, engine_view)

    async def shutdown(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
