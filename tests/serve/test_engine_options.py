"""Engine options (tensor_parallel_size, dtype, quantization, max_num_seqs, gpu_memory_utilization,
enable_prefix_caching): validated in the config, and carried into vLLM's engine args by the one
builder the server uses (`server.engine_for` -> `VLLMEngine.engine_kwargs`). No engine starts.
Hub model ids resolve from a local Hugging Face cache and keep their id as the base model."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import pytest

from collm_serve.config import AgentConfig, ConfigError, load_agent_config
from collm_serve.models import ModelUnavailableError, model_id_for, resolve_model, tiny_model_dir
from collm_serve.agent.server import engine_for
from tests.conftest import write_agents_yaml

OPTIONS = {"tensor_parallel_size": 2, "dtype": "bfloat16", "quantization": "awq", "max_num_seqs": 8,
           "gpu_memory_utilization": 0.5, "enable_prefix_caching": False}


def config(tmp_path, **settings) -> AgentConfig:
    path = write_agents_yaml(tmp_path / "agents.yaml", {"a": {"engine": "vllm", **settings}})
    return load_agent_config("a", path)


@pytest.mark.parametrize("settings, field", [
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"dtype": "fp8"}, "dtype"),
    ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"quantization": ""}, "quantization"),
    ({"enable_prefix_caching": "sometimes"}, "enable_prefix_caching"),
    ({"arrival_quiet_ms": -1}, "arrival_quiet_ms"),
    ({"engine": "transformers", "quantization": "awq"}, "quantization"),
    ({"engine": "transformers", "tensor_parallel_size": 2}, "tensor_parallel_size"),
    ({"http_port": 50061, "port": 50061}, "http_port"),
])
def test_bad_engine_options_name_the_field(tmp_path, settings, field):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, **settings)
    assert field in str(e.value)


def test_options_reach_the_vllm_engine_args(tmp_path):
    cfg = config(tmp_path, **OPTIONS, max_model_len=1024, max_prompt_tokens=512)
    engine = engine_for(cfg, "/models/m", "org/m")
    gpu = engine.engine_kwargs(on_cpu=False)
    assert {k: gpu[k] for k in OPTIONS} == OPTIONS
    assert gpu["served_model_name"] == "org/m" and gpu["max_model_len"] == 1024
    assert gpu["disable_log_stats"] is False  # vLLM's own Prometheus metrics stay on
    cpu = engine_for(config(tmp_path), "/models/m", "m").engine_kwargs(on_cpu=True)
    assert cpu["dtype"] == "float32" and cpu["enable_prefix_caching"] is True and cpu["tensor_parallel_size"] == 1
    assert "quantization" not in cpu and "max_num_seqs" not in cpu and "gpu_memory_utilization" not in cpu
    assert engine_for(config(tmp_path, arrival_quiet_ms=12), "/models/m", "m")._arrivals.quiet_s == 0.012


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed")
def test_engine_args_are_fields_vllm_knows_and_quantization_is_checked(tmp_path):
    """A misspelled key would only fail when an engine starts (minutes later, on a GPU box)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from collm_serve.engines.vllm_engine import check_quantization
    from collm_serve.errors import InvalidArgument

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    engine = engine_for(config(tmp_path, **OPTIONS, kv_cache_bytes=1 << 30), "/models/m", "m")
    for on_cpu in (True, False):
        assert set(engine.engine_kwargs(on_cpu)) <= known
    check_quantization("awq")
    with pytest.raises(InvalidArgument) as e:
        check_quantization("awqq")
    assert e.value.field == "quantization" and "gptq" in str(e.value)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding `acme/tiny` (the tiny model) as the hub lays it out."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir(), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_hub_id_resolves_from_the_local_cache_offline(hub_cache):
    assert resolve_model("acme/tiny") == hub_cache
    assert model_id_for("acme/tiny") == "acme/tiny"
    assert model_id_for(str(hub_cache)) == "acme/tiny"  # the snapshot folder keeps the real id
    with pytest.raises(ModelUnavailableError) as e:
        resolve_model("acme/absent")
    assert "HF_HUB_OFFLINE" in str(e.value) and "huggingface-cli download acme/absent" in str(e.value)
