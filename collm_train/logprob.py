"""Teacher-forced macro-action log-probs: log pi(a|h) = SUM of the response tokens' log-probs.

One forward per batch. Layout (B rows, P = longest prompt, R = longest response):

    [pad .. pad | prompt_i | response_i | pad .. pad]
     <- left-pad to P ->     <- right-pad to R ->

so every response starts at column P and the logits that predict responses are the same R
columns for all rows: `logits_to_keep=R+1` computes only those (no (B, P+R, V) tensor).
Attention mask, position ids and response mask come from the LENGTHS, never from searching
for the pad id: SmolLM2's pad id is its end-of-turn id `<|im_end|>`, which occurs inside
chat prompts and closes every response (the closing token is part of the action and is kept).

Token log-probs are those of the sampling distribution (`collm_serve.sampling`:
temperature -> top-k -> top-p), so for on-policy data the learner's log-prob equals the logged
behaviour log-prob and the importance ratio is exactly 1. With the defaults (temperature 1, no
top-k / top-p) they are the paper's rule, the log-softmax of the raw logits (CoMLRL maac.py:818-830,
iac.py:853-867, magrpo.py:1464-1479), which the trainer uses when use_sampling_params is False.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from collm_serve.sampling import processed_logprobs


class SeqLogprobs(NamedTuple):
    seq_logp: torch.Tensor  # (B,) sum over response tokens
    token_logp: torch.Tensor  # (B, R) per response token, 0 where mask is False
    mask: torch.Tensor  # (B, R) bool, True on real response tokens


def _per_row(value: float | int | Sequence[float | int], n: int, name: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} sequences; give one per sequence")
    return value


def pad_batch(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad prompts, right-pad responses.

    Returns input_ids (B, P+R), attention_mask (B, P+R), position_ids (B, P+R), resp_mask (B, R).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses; they must pair up")
    p_len = torch.tensor([len(p) for p in prompts], dtype=torch.long)  # (B,)
    r_len = torch.tensor([len(r) for r in responses], dtype=torch.long)  # (B,)
    if len(prompts) and int(p_len.min()) < 1:
        raise ValueError("every prompt needs at least one token (the first response token is predicted from it)")
    B = len(prompts)
    P = int(p_len.max()) if B else 0
    R = int(r_len.max()) if B else 0
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, P - len(p) : P] = torch.as_tensor(list(p), dtype=torch.long)
        input_ids[i, P : P + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    col = torch.arange(P + R)  # (P+R,)
    start = (P - p_len)[:, None]  # (B, 1)
    end = (P + r_len)[:, None]  # (B, 1)
    attention_mask = (col >= start) & (col < end)  # (B, P+R)
    # positions count real tokens only, so a left-padded row sees the positions it would alone
    position_ids = (col - start).clamp(min=0)  # (B, P+R)
    resp_mask = torch.arange(R)[None, :] < r_len[:, None]  # (B, R)
    return input_ids, attention_mask.long(), position_ids, resp_mask


def sequence_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    temperature: float | Sequence[float] = 1.0,
    top_k: int | Sequence[int] = 0,
    top_p: float | Sequence[float] = 1.0,
    pad_id: int = 0,
) -> SeqLogprobs:
    """Teacher-forced log pi(response | prompt) for a batch, in one forward pass.

    temperature / top_k / top_p: one value for all rows or one per row (each action's logged
    sampling parameters). A response token that the learner's top-k/top-p would mask (possible
    only through engine-vs-learner numeric drift) falls back to its temperature-only log-prob,
    so the loss stays finite.
    """
    B = len(prompts)
    device = next(model.parameters()).device
    input_ids, attention_mask, position_ids, resp_mask = pad_batch(prompts, responses, pad_id)
    R = resp_mask.shape[1]
    if B == 0 or R == 0:
        z = torch.zeros(B, device=device)
        return SeqLogprobs(z, torch.zeros(B, R, device=device), resp_mask.to(device))
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        logits_to_keep=R + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]  # (B, R, V): column j predicts response token j
    targets = input_ids[:, -R:].to(device)  # (B, R)
    resp_mask = resp_mask.to(device)

    temps = _per_row(temperature, B, "temperature")
    ks = _per_row(top_k, B, "top_k")
    ps = _per_row(top_p, B, "top_p")
    token_logp = torch.zeros(B, R, device=device, dtype=torch.float32)  # (B, R)
    groups: dict[tuple[float, int, float], list[int]] = {}
    for i in range(B):
        groups.setdefault((float(temps[i]), int(ks[i] or 0), float(ps[i])), []).append(i)
    for (t, k, p), rows in groups.items():
        idx = torch.tensor(rows, device=device)
        g_logits = logits[idx]  # (b, R, V)
        g_targets = targets[idx][..., None]  # (b, R, 1)
        lp = processed_logprobs(g_logits, t, k, p).gather(-1, g_targets).squeeze(-1)  # (b, R)
        if k > 0 or p < 1.0:
            raw = processed_logprobs(g_logits, t).gather(-1, g_targets).squeeze(-1)  # (b, R)
            lp = torch.where(torch.isfinite(lp), lp, raw)
        token_logp = token_logp.index_copy(0, idx, lp)
    token_logp = token_logp.masked_fill(~resp_mask, 0.0)  # (B, R)
    return SeqLogprobs(token_logp.sum(-1), token_logp, resp_mask)
