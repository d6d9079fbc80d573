"""The sampling distribution, written once: temperature → top-k → top-p on raw logits.

The transformers engine samples from it, and the trainer's teacher-forced log-probs use it, so
a behaviour log-prob logged by a service and the learner's log-prob of the same token agree
(the importance ratio of on-policy data is 1). vLLM applies the same order (temperature, then
top-k/top-p masking) and reports it with `logprobs_mode="processed_logprobs"`.
Temperature 0 means greedy; its log-probs are those of the unscaled distribution.
It lives at the package top, not under engines/, because it is not an engine: the engines and
the trainer (collm_train/logprob.py, collm_train/sampling.py) are its users; the values it is
called with are those a trace records (`collm_serve.traces.records.SamplingRecord`).
"""

from __future__ import annotations

import torch


def process_logits(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Return logits of the distribution actually sampled from; masked entries are -inf.

    logits: (..., V). top_k <= 0 disables top-k; top_p >= 1 disables top-p.
    """
    if temperature > 0:
        logits = logits / temperature
    if top_k and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop the low tail whose total mass is <= 1 - top_p; always keep the top token
        drop_sorted = cum <= (1.0 - top_p)
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def processed_logprobs(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """log-softmax of `process_logits` (..., V)."""
    return torch.log_softmax(process_logits(logits.float(), temperature, top_k, top_p), dim=-1)
