"""End to end: two live agent services → collect through the orchestrator → `collm-train
--push` → the services answer with the new versions (verified by sha256)."""

from __future__ import annotations

import asyncio
import json

import yaml
from click.testing import CliRunner

from collm_serve.adapters.manifest import read_manifest
from collm_serve.client import AgentClient
from collm_serve.orchestrator.collector import collect
from collm_serve.team import load_team_config
from collm_train.cli import main
from tests.conftest import start_agent


def test_collect_train_push_live(tmp_path):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    agents = {a: start_agent(tmp_path, a, adapter_root=str(adapters), max_tokens_limit=64)
              for a in ("helper", "main")}
    try:
        team_path = tmp_path / "team.yaml"
        team_path.write_text(yaml.safe_dump({
            "task": "toy", "traces": str(tmp_path / "traces.db"),
            "agents": {a: {"address": p.address, "sampling": {"max_tokens": 12, "temperature": 1.0, "top_p": 1.0}}
                       for a, p in agents.items()}}))
        team = load_team_config(team_path)
        summary = asyncio.run(collect(team, 4, "train"))
        assert summary.ok == 4, summary.failures
        result = CliRunner().invoke(main, [
            "--algo", "cc", "--traces", team.traces, "--team", str(team_path), "--out", str(adapters),
            "--model", "embedded:tiny-llama", "--runs", str(tmp_path / "runs"), "--push", "--minibatch-size", "4"])
        assert result.exit_code == 0, result.output
        for name, proc in agents.items():
            manifest = read_manifest(adapters / name / "v1")
            assert manifest.algorithm == "cc" and manifest.base_model == "tiny-llama-s0"
            with AgentClient(proc.address) as c:
                out = c.generate(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
                assert out.adapter.version == 1 and out.adapter.sha256 == manifest.sha256
                assert c.info().active_adapter.sha256 == manifest.sha256
        assert "active v1 sha256=" in result.output
        rows = [json.loads(ln) for ln in next((tmp_path / "runs").rglob("metrics.jsonl")).read_text().splitlines()]
        assert rows and "losses/actor" in rows[0]
        # a second push makes v2 and the team moves together
        result = CliRunner().invoke(main, [
            "--algo", "cc", "--traces", team.traces, "--team", str(team_path), "--out", str(adapters),
            "--model", "embedded:tiny-llama", "--runs", str(tmp_path / "runs"), "--push"])
        assert result.exit_code == 0, result.output
        for name, proc in agents.items():
            with AgentClient(proc.address) as c:
                assert c.info().active_adapter.version == 2
    finally:
        for p in agents.values():
            p.stop()


def test_push_is_all_or_none(tmp_path):
    """If one agent refuses its new version, no agent activates its new one."""
    from collm_serve.adapters.factory import make_adapter
    from collm_serve.models import tiny_model_dir
    from collm_train.push import PushError, push_team

    root = tmp_path / "adapters"
    agents = {a: start_agent(tmp_path, a, adapter_root=str(root)) for a in ("helper", "main")}
    try:
        dirs = {a: make_adapter(tiny_model_dir(), root / a / "v1", name=a, version=1, base_model_id="tiny-llama-s0",
                                prompt_ids=[1], target="", steps=0) for a in agents}
        push_team(dirs, {a: p.address for a, p in agents.items()})
        v2 = {a: make_adapter(tiny_model_dir(), root / a / "v2", name=a, version=2, base_model_id="tiny-llama-s0",
                              prompt_ids=[1], target="", steps=0, seed=5) for a in agents}
        (v2["main"] / "adapter_model.safetensors").write_bytes(b"corrupt")
        try:
            push_team(v2, {a: p.address for a, p in agents.items()})
        except PushError as e:
            assert "main refused" in str(e)
        else:
            raise AssertionError("a corrupt adapter was pushed")
        for a, p in agents.items():
            with AgentClient(p.address) as c:
                assert c.info().active_adapter.version == 1, a
    finally:
        for p in agents.values():
            p.stop()
