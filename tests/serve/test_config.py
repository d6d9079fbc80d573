import subprocess
import sys

from click.testing import CliRunner

from collm_serve.cli import main
from collm_serve.config import ConfigError, load_agent_config


def test_builtin_agents_cover_the_paper_tasks():
    for name in ("coder", "helper", "main", "writer_a", "writer_b", "builder_a", "builder_b"):
        cfg = load_agent_config(name)
        assert cfg.name == name and cfg.engine == "vllm"
    ports = {load_agent_config(n).port for n in ("helper", "main", "writer_a", "writer_b", "builder_a", "builder_b", "coder")}
    assert len(ports) == 7


def test_bad_values_name_the_key(tmp_path):
    bad = tmp_path / "a.yaml"
    bad.write_text("agents:\n  helper:\n    max_concurrent_requests: 0\n")
    try:
        load_agent_config("helper", bad)
    except ConfigError as e:
        assert "max_concurrent_requests" in str(e)
    else:
        raise AssertionError("invalid config accepted")
    bad.write_text("agents:\n  helper:\n    portt: 5\n")
    try:
        load_agent_config("helper", bad)
    except ConfigError as e:
        assert "portt" in str(e)
    else:
        raise AssertionError("typo accepted")


def test_cli_bad_config_exits_with_one_line(tmp_path):
    bad = tmp_path / "a.yaml"
    bad.write_text("agents:\n  helper:\n    sampling: {temperature: -1}\n")
    r = CliRunner().invoke(main, ["start", "--agent", "helper", "--config", str(bad)])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.strip().splitlines() if ln]
    assert len(lines) == 1 and "sampling.temperature" in lines[0]
    bad.write_text("agents: [unclosed\n")
    p = subprocess.run([sys.executable, "-m", "collm_serve", "start", "--agent", "helper", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1 and "not valid YAML" in p.stderr


def test_sampling_an_engine_refuses_is_a_config_error(tmp_path):
    """temperature 3 was accepted, reached SERVING, then failed every request with INTERNAL."""
    bad = tmp_path / "a.yaml"
    bad.write_text("agents:\n  helper:\n    sampling: {temperature: 3.0}\n")
    r = CliRunner().invoke(main, ["start", "--agent", "helper", "--config", str(bad)])
    assert r.exit_code == 1 and "sampling" in r.output and "must be in [0, 2], got 3.0" in r.output, r.output


def test_cli_unknown_model_exits_cleanly(tmp_path):
    r = CliRunner().invoke(main, ["start", "--agent", "helper", "--model", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "neither" in r.output


def test_cpu_affinity_must_name_cores_this_process_may_use():
    import os

    import pytest

    from collm_serve.config import AgentConfig
    from collm_serve.agent.server import _pin_to_cores

    before = os.sched_getaffinity(0)
    with pytest.raises(ConfigError, match=r"cpu_affinity: cores \[4096\] are not available"):
        _pin_to_cores([4096])
    assert os.sched_getaffinity(0) == before  # nothing changed
    with pytest.raises(ValueError):
        AgentConfig(name="a", cpu_affinity=[])
