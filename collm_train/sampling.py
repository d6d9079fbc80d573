"""Sample responses from a (LoRA) causal LM with the shared sampling distribution.

For offline experiments and tests: draws tokens from `processed_logprobs` (the same distribution
the engines serve and the trainer scores), and returns the per-token log-probs the way an
engine logs them, so the result can be written straight into ActionRecords. KV-cached, with
left-padded prompts and positions from lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from collm_serve.sampling import processed_logprobs


@torch.no_grad()
def sample_responses(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    pad_id: int = 0,
) -> tuple[list[list[int]], list[list[float]]]:
    """Returns (response token ids, their log-probs) per prompt; the eos token is kept."""
    device = next(model.parameters()).device
    B = len(prompts)
    p_len = torch.tensor([len(p) for p in prompts])
    P = int(p_len.max())
    input_ids = torch.full((B, P), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, P - len(p) :] = torch.tensor(list(p))
    start = (P - p_len)[:, None]  # (B, 1)
    attention_mask = (torch.arange(P) >= start).long()  # (B, P)
    position_ids = (torch.arange(P) - start).clamp(min=0)  # (B, P)
    out_ids: list[list[int]] = [[] for _ in range(B)]
    out_lp: list[list[float]] = [[] for _ in range(B)]
    finished = torch.zeros(B, dtype=torch.bool)
    past = None
    step_ids = input_ids
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
        )
        past = out.past_key_values
        logp = processed_logprobs(out.logits[:, -1, :], temperature, top_k, top_p).cpu()  # (B, V)
        if temperature > 0:
            tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)  # (B,)
        else:
            tok = logp.argmax(-1)
        for i in range(B):
            if not finished[i]:
                out_ids[i].append(int(tok[i]))
                out_lp[i].append(float(logp[i, tok[i]]))
                if eos_id is not None and int(tok[i]) == eos_id:
                    finished[i] = True
        if bool(finished.all()):
            break
        step_ids = tok[:, None]
        attention_mask = torch.cat([attention_mask, torch.ones(B, 1, dtype=torch.long)], dim=1)
        position_ids = position_ids[:, -1:] + 1
    return out_ids, out_lp
