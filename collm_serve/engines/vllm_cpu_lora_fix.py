"""vLLM plugin: fix the CPU LoRA kernels' "-1 means no LoRA" wrap-around (engine bug 1).

vLLM-CPU's torch LoRA ops (`bgmv_shrink`, `bgmv_expand`, `bgmv_expand_slice`, and the sgmv_*
ops that call them) index the stacked adapter weights with the per-token LoRA index, where -1
means "base model". `weights[-1]` silently selects the LAST slot, so a base-model request in a
batch whose slots are all in use is served with somebody's adapter (upstream fix pending,
vllm PR 48421). Our versions select with a clamped index and zero the rows whose index is -1.

Installed in every engine process through the `vllm.general_plugins` entry point (see
pyproject.toml); only patches when the platform is the CPU. Tested by
tests/serve/test_vllm_lora_mixing.py (base + adapter rows with every slot full).
"""

from __future__ import annotations

import torch

_PATCHED = False


def _select(weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype):
    valid = indices >= 0
    selected = weights[indices.clamp(min=0)].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    return selected, valid


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    selected, valid = _select(lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    out = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    out = out * valid.unsqueeze(1).to(out.dtype)  # (B, r): rows without a LoRA contribute 0
    output_tensor[:, : out.shape[1]] = scaling * out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    selected, valid = _select(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    out = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    out = out * valid.unsqueeze(1).to(out.dtype)
    limit = output_tensor.shape[0]
    if out.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    width = min(out.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += out[:limit, :width]
    else:
        output_tensor[:, :width] = out[:limit, :width]


def bgmv_expand_slice(
    inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size,
    add_inputs=True,
):
    selected, valid = _select(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    out = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    out = out * valid.unsqueeze(1).to(out.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += out
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = out


def register() -> None:
    """vLLM general-plugin hook; idempotent."""
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
