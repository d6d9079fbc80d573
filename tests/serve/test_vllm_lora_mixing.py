"""vLLM-CPU LoRA bug 1: with every LoRA slot in use, base-model rows in the same batch were
served with the LAST slot's adapter. Our `collm_cpu_lora_fix` plugin masks them.

The same scenario runs twice: with the plugin (base rows must equal the base model alone) and,
to prove the test can fail, with vLLM's plugins disabled (VLLM_PLUGINS=none): the bug shows.
"""

from __future__ import annotations

import threading

import pytest

from collm_serve.adapters.factory import make_adapter
from collm_serve.client import AgentClient
from collm_serve.models import tiny_model_dir

PROMPTS = [[{"role": "user", "content": f"Count to {i}."}] for i in range(2)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix-adapters")
    for v in (1, 2):  # random (untrained) LoRA weights: a large, visible effect
        make_adapter(tiny_model_dir(), root / f"v{v}", name="helper", version=v,
                     base_model_id="tiny-llama-s0", prompt_ids=[1], target="", steps=0, seed=v)
    return root


def mixed_batch_outputs(agent) -> tuple[dict, list]:
    """Reference outputs alone, then the same requests mixed in one batch with all slots busy."""
    with AgentClient(agent.address) as c:
        c.load_adapter(agent_root(agent) / "v1", activate=False)
        c.load_adapter(agent_root(agent) / "v2", activate=False)  # keep_versions=2, swap_slots=0 → both slots full
        alone = {(i, v): c.generate(messages=p, max_tokens=12, temperature=0,
                                    use_base_model=(v == 0), adapter_version=v or None).token_ids
                 for i, p in enumerate(PROMPTS) for v in (0, 1, 2)}
    mismatches = []
    for _ in range(2):
        results = {}
        def run(i, v):
            with AgentClient(agent.address) as c2:
                results[(i, v)] = c2.generate(messages=PROMPTS[i], max_tokens=12, temperature=0,
                                              use_base_model=(v == 0), adapter_version=v or None).token_ids
        threads = [threading.Thread(target=run, args=(i, v)) for i in range(len(PROMPTS)) for v in (0, 1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        mismatches += [k for k, ids in results.items() if ids != alone[k]]
    return alone, mismatches


def agent_root(agent):
    return agent._root


@pytest.mark.parametrize("plugin", ["on", "off"])
def test_base_rows_with_all_slots_full(tmp_path, root, plugin):
    from collm_serve.launcher import AgentProcess
    from tests.conftest import write_agents_yaml

    cfg = write_agents_yaml(tmp_path / "agents.yaml", {"helper": {
        "engine": "vllm", "model": "embedded:tiny-llama", "port": 0, "max_model_len": 512,
        "max_prompt_tokens": 256, "keep_versions": 2, "swap_slots": 0, "kv_cache_bytes": 64 << 20,
        "adapter_root": str(root), "state_dir": str(tmp_path / "state")}})
    env = {"VLLM_PLUGINS": "none"} if plugin == "off" else {}
    agent = AgentProcess("helper", config=cfg, env=env, log_path=tmp_path / "agent.log").start()
    agent._root = root
    try:
        alone, mismatches = mixed_batch_outputs(agent)
        assert any(alone[(i, 0)] != alone[(i, 1)] for i in range(len(PROMPTS))), "adapters have no effect"
        if plugin == "on":
            assert mismatches == [], f"rows served with the wrong weights in a mixed batch: {mismatches}"
        else:
            base_wrong = [k for k in mismatches if k[1] == 0]
            assert base_wrong, "without the fix the engine bug should corrupt base rows (did vLLM fix it?)"
    finally:
        agent.stop()
