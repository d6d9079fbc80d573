"""Our CPU LoRA ops (collm_serve/engines/vllm_cpu_lora_fix.py) against the plain formula.

Reference: out[t] = W[idx[t]] @ x[t] for idx >= 0, 0 for idx == -1 — vLLM's gather-einsum
with the wrap-around fixed. Mixed batches, one adapter, base only, 3-d and 4-d weight stacks,
add/overwrite, slices: the end-to-end check against peft is test_vllm_lora_mixing.py.
"""

from __future__ import annotations

import pytest
import torch

from collm_serve.engines.vllm_cpu_lora_fix import bgmv_expand, bgmv_expand_slice, bgmv_shrink

SLOTS, RANK, HIDDEN = 3, 8, 48
CASES = {"mixed": [0, -1, 2, 0, 1, -1, 2, 2], "one_adapter": [1] * 8, "base_only": [-1] * 8, "single_token": [2]}


def reference(x, weights, idx):
    w = weights.squeeze(1) if weights.dim() == 4 else weights
    out = torch.einsum("bi, boi -> bo", x, w[idx.clamp(min=0)])
    return out * (idx >= 0).unsqueeze(1).to(out.dtype)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("four_d", [False, True])
def test_shrink_matches_reference(case, four_d):
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor(CASES[case])
    x = torch.randn(len(idx), HIDDEN, generator=g)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g) if four_d else torch.randn(SLOTS, RANK, HIDDEN, generator=g)
    y = torch.full((len(idx), RANK), 7.0)
    bgmv_shrink(x, a, y, idx, scaling=0.5)
    torch.testing.assert_close(y, 0.5 * reference(x, a, idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("add", [True, False])
def test_expand_and_expand_slice_match_reference(case, add):
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor(CASES[case])
    h = torch.randn(len(idx), RANK, generator=g)
    b = torch.randn(SLOTS, 1, HIDDEN, RANK, generator=g)
    start = torch.randn(len(idx), HIDDEN + 5, generator=g)  # the model's output may be wider (padding)
    y = start.clone()
    bgmv_expand(h, b, y, idx, add_inputs=add)
    expected = start.clone()
    expected[:, :HIDDEN] = (start[:, :HIDDEN] if add else 0) + reference(h, b, idx)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)

    start = torch.randn(len(idx), 3 * HIDDEN, generator=g)  # e.g. the k slice of a fused qkv output
    y = start.clone()
    bgmv_expand_slice(h, b, y, idx, HIDDEN, HIDDEN, add_inputs=add)
    expected = start.clone()
    expected[:, HIDDEN : 2 * HIDDEN] = (start[:, HIDDEN : 2 * HIDDEN] if add else 0) + reference(h, b, idx)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
