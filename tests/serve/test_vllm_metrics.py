"""vLLM's own engine metrics (TTFT, TPOT, KV cache) on the agent's metrics port, beside ours
(collm_serve/metrics.py SharedFamilies; the engine runs with disable_log_stats=False)."""

from __future__ import annotations

import importlib.util

import pytest

from collm_serve.client import AgentClient
from tests.conftest import metrics_text, start_agent

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed")]


def test_vllm_engine_metrics_are_served_beside_ours(tmp_path):
    agent = start_agent(tmp_path, "helper", engine="vllm", kv_cache_bytes=32 << 20, keep_versions=1,
                        max_model_len=512, max_prompt_tokens=256, cpu_threads=None)
    try:
        with AgentClient(agent.address) as c:
            out = c.generate(messages=[{"role": "user", "content": "Hi"}], max_tokens=8, min_tokens=8)
        assert len(out.token_ids) == 8
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in metrics_text(agent).splitlines() if line and not line.startswith("#")}
        by_name = lambda prefix: [v for k, v in samples.items() if k.startswith(prefix)]  # noqa: E731
        assert by_name("vllm:time_to_first_token_seconds_count") == [1.0], sorted(k for k in samples
                                                                                  if "vllm" in k or "Generate" in k)
        assert sum(by_name("vllm:generation_tokens_total")) == 8
        assert by_name("vllm:kv_cache_usage_perc")  # the gauge is there (0 once the request ended)
        assert by_name("vllm:inter_token_latency_seconds_count") or by_name("vllm:time_per_output_token_seconds_count")
        ours = [k for k in samples if k.startswith("collm_requests_total") and 'method="Generate"' in k]
        assert [samples[k] for k in ours] == [1.0] and 'code="OK"' in ours[0], ours
        assert by_name("process_resident_memory_bytes")
    finally:
        agent.stop()
