"""Teacher-forced macro-action log-probs: batched == unbatched, masks from lengths."""

from __future__ import annotations

import pytest
import torch

from collm_serve.sampling import processed_logprobs
from collm_train.logprob import pad_batch, sequence_logprobs
from collm_train.sampling import sample_responses

PAD = 2  # like SmolLM2: pad == end-of-turn, and it occurs inside prompts

PROMPTS = [
    [5, 9, PAD, 11, 12, 13, 14],  # contains the pad id (a chat prompt's <|im_end|>)
    [7],
    [20, 21, PAD, 22],
]
RESPONSES = [
    [30, 31, PAD],  # the closing end-of-turn token is part of the action
    [40, 41, 42, 43, 44],
    [PAD],
]


def _single(model, prompt, response, temperature=1.0, top_k=0, top_p=1.0):
    """Reference: one unpadded sequence, full logits, manual gather.

    A token outside the top-k/top-p support falls back to its temperature-only log-prob (the
    fixed responses here were not sampled from this model, so many are outside it).
    """
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]  # (R, V)
    target = torch.tensor(response)[:, None]
    lp = processed_logprobs(logits, temperature, top_k, top_p).gather(-1, target).squeeze(-1)  # (R,)
    raw = processed_logprobs(logits, temperature).gather(-1, target).squeeze(-1)
    return torch.where(torch.isfinite(lp), lp, raw)


def test_pad_batch_layout():
    ids, attn, pos, resp = pad_batch(PROMPTS, RESPONSES, pad_id=PAD)
    assert ids.shape == (3, 7 + 5)
    # row 1: six left pads, prompt [7], response, no right pad
    assert attn[1].tolist() == [0] * 6 + [1] * 6
    assert pos[1, 6:].tolist() == list(range(6))
    # row 0: no left pad; the pad id inside the prompt is attended; right pads are not
    assert attn[0].tolist() == [1] * 10 + [0] * 2
    assert resp.tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0]]


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.7, top_p=0.9), dict(temperature=0.6, top_k=20)])
def test_batched_matches_unbatched(tiny_model, sampling):
    with torch.no_grad():
        out = sequence_logprobs(tiny_model, PROMPTS, RESPONSES, pad_id=PAD, **sampling)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        ref = _single(tiny_model, p, r, **sampling)
        assert out.mask[i].sum().item() == len(r)
        assert out.token_logp[i, : len(r)].tolist() == pytest.approx(ref.tolist(), abs=1e-5)
        assert out.seq_logp[i].item() == pytest.approx(ref.sum().item(), abs=1e-5)
        assert out.token_logp[i, len(r) :].abs().sum().item() == 0.0  # padding contributes nothing
    assert out.token_logp[0, 2].item() < 0  # the closing PAD / end-of-turn token is scored


def test_per_row_sampling_params(tiny_model):
    temps, top_ps = [1.0, 0.7, 0.5], [1.0, 0.9, 0.8]
    with torch.no_grad():
        out = sequence_logprobs(tiny_model, PROMPTS, RESPONSES, temperature=temps, top_p=top_ps)
    for i in range(3):
        ref = _single(tiny_model, PROMPTS[i], RESPONSES[i], temps[i], 0, top_ps[i])
        assert out.seq_logp[i].item() == pytest.approx(ref.sum().item(), abs=1e-5)
    assert torch.isfinite(out.seq_logp).all()


def test_gradient_finite_with_tokens_outside_top_k(tiny_model):
    out = sequence_logprobs(tiny_model, PROMPTS, RESPONSES, temperature=0.7, top_k=3)
    out.seq_logp.sum().backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_sampled_logprobs_equal_teacher_forced(tiny_model):
    """The sampler's logged log-probs (KV cache, left-padded batch) == trainer's: ratio exactly 1."""
    g = torch.Generator().manual_seed(0)
    prompts = [[5, 9, PAD, 11], [7], [20, 21, 22, 23, 24, 25]]
    for kw in (dict(temperature=1.0), dict(temperature=0.7, top_p=0.9, top_k=50)):
        resp, lps = sample_responses(tiny_model, prompts, 6, eos_id=PAD, generator=g, **kw)
        with torch.no_grad():
            out = sequence_logprobs(tiny_model, prompts, resp, **kw)
        for i in range(len(prompts)):
            assert out.token_logp[i, : len(resp[i])].tolist() == pytest.approx(lps[i], abs=1e-5)
