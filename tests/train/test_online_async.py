"""The asynchronous online loop (collm_train/online_async.py) against live agent services.

- ahead 0 reduces to the sync loop: the same episodes (problem, seed, sampled tokens, adapter
  versions) train in the same order and publish the same adapters (sha256).
- a version pushed while an episode runs never changes that episode's agent versions.
- kill -9 of `collm-train online --async`, then --resume: no episode trained twice, none lost.

Tiny model, transformers engine, a few episodes each: the tests check the loop's bookkeeping,
not learning (bench/ measures that)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from collm_serve.adapters.manifest import read_manifest
from collm_serve.client import AgentClient
from collm_serve.launcher import AgentProcess, start_all
from collm_serve.team import load_team_config
from collm_serve.traces import TraceStore
from tests.conftest import REPO, write_agents_yaml

MODEL = "embedded:tiny-llama"
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start_team(tmp: Path, task: str, names: tuple[str, ...], max_tokens: int, **team) -> tuple[list, Path]:
    """Agent services `names` (adapters from tmp/adapters) and a team file for `task`."""
    procs = []
    for name in names:
        cfg = write_agents_yaml(tmp / f"agents-{name}.yaml", {name: {
            "engine": "transformers", "model": MODEL, "port": 0, "metrics_port": 0,
            "max_model_len": 4096, "max_prompt_tokens": 3968, "max_tokens_limit": 64,
            "sampling": {"max_tokens": max_tokens, "temperature": 1.0, "top_p": 1.0},
            "state_dir": str(tmp / f"state-{name}"), "adapter_root": str(tmp / "adapters"),
            "drain_seconds": 5, "cpu_threads": 1}})
        procs.append(AgentProcess(name, config=cfg, log_path=tmp / f"{name}.log", env=ENV))
    start_all(procs)
    team_path = tmp / "team.yaml"
    team_path.write_text(yaml.safe_dump({
        "task": task, "traces": str(tmp / "traces.db"), **team,
        "agents": {p.agent: {"address": p.address,
                             "sampling": {"max_tokens": max_tokens, "temperature": 1.0, "top_p": 1.0}}
                   for p in procs}}))
    return procs, team_path


def trainer_for(team, **cfg):
    from collm_serve.models import model_id_for, resolve_model
    from collm_train.config import TrainConfig
    from collm_train.trainer import Trainer

    config = TrainConfig(algo="cc", minibatch_size=4, **cfg)
    return Trainer(config, resolve_model(MODEL), list(team.agents), base_model_id=model_id_for(MODEL))


def recording(trainer) -> list:
    """Wrap trainer.update: what each update trained on, in order."""
    calls = []
    update = trainer.update

    def spy(episodes, **kw):
        calls.append([(e.problem_id, e.seed, [(a.agent, a.adapter_version, tuple(a.response_token_ids))
                                              for t in e.turns for a in t.actions]) for e in episodes])
        return update(episodes, **kw)

    trainer.update = spy
    return calls


def test_ahead_zero_is_the_sync_loop(tmp_path):
    """Same episodes, same order, same served versions, same published adapters as online_loop."""
    from collm_train.online import online_loop
    from collm_train.online_async import async_online_loop
    from collm_train.run import RunLog

    procs, team_path = start_team(tmp_path, "toy", ("helper", "main"), max_tokens=6)
    try:
        team = load_team_config(team_path)
        seen = {}
        for name, loop in (("sync", online_loop), ("async", async_online_loop)):
            for p in procs:  # both start from the base model
                with AgentClient(p.address) as c:
                    c.activate_adapter(use_base_model=True)
            t = team.model_copy(update={"traces": str(tmp_path / f"{name}.db")})
            trainer = trainer_for(t, max_staleness=0)
            calls = recording(trainer)
            run = RunLog(tmp_path / name, "toy", "cc", 0, {})
            rows = loop(t, trainer, run, out_dir=tmp_path / "adapters" / name, iterations=2,
                        episodes_per_iteration=3, traces=t.traces, concurrency=1, echo=lambda *_: None)
            shas = [read_manifest(tmp_path / "adapters" / name / a / f"v{v}").sha256
                    for v in (1, 2) for a in ("helper", "main")]
            seen[name] = (calls, shas, [r["losses/actor"] for r in rows], [r["charts/dropped_stale"] for r in rows])
            run.close()
        sync, async_ = seen["sync"], seen["async"]
        assert [len(c) for c in sync[0]] == [3, 3]
        assert {v for call in sync[0] for ep in call for _, v, _ in ep[2]} == {0, 1}  # batch b on version b
        assert async_[0] == sync[0]  # same episodes, tokens and served versions, same order
        assert async_[1] == sync[1]  # same updates: identical adapters
        assert async_[2] == sync[2] and async_[3] == sync[3] == [0.0, 0.0]
    finally:
        for p in procs:
            p.stop(timeout=10)


def test_a_version_pushed_mid_episode_never_changes_its_versions(tmp_path, monkeypatch):
    """tally plays 4 turns; the first push waits until an episode is running with turns still to
    play (ahead 2: slices 1 and 2 are collected while slice 0 trains), so the version changes
    under it: every agent keeps one version per episode."""
    import collm_train.online_async as oa
    from collm_train.run import RunLog

    procs, team_path = start_team(tmp_path, "tally", ("alice", "bob"), max_tokens=12)
    team = load_team_config(team_path)
    pushes = []  # (running episode id, its turns then, version pushed, time)
    real_push = oa.push_team

    def push_mid_episode(dirs, addresses, team=None):
        if pushes:  # the first push is the one made to land mid-episode
            return real_push(dirs, addresses, team)
        deadline = time.monotonic() + 120
        with TraceStore(team_path.parent / "traces.db") as store:
            while True:
                mid = [h for h in store.list_episodes(status="running") if 1 <= h["turns"] <= 2]
                if mid:
                    break
                assert time.monotonic() < deadline, "no episode was running when the version was pushed"
                time.sleep(0.01)
        version = read_manifest(next(iter(dirs.values()))).version
        out = real_push(dirs, addresses, team)
        pushes.append((mid[0]["episode_id"], mid[0]["turns"], version, time.time()))
        return out

    monkeypatch.setattr(oa, "push_team", push_mid_episode)
    try:
        trainer = trainer_for(team)
        run = RunLog(tmp_path / "runs", "tally", "cc", 0, {})
        rows = oa.async_online_loop(team, trainer, run, out_dir=tmp_path / "adapters", iterations=3,
                                    episodes_per_iteration=2, traces=team.traces, concurrency=1, ahead=2,
                                    echo=print)
        run.close()
        assert len(rows) == 3 and [p[2] for p in pushes] == [1]
        with TraceStore(team.traces) as store:
            episodes = list(store.iter_episodes(task="tally"))
            for ep_id, turns_then, version, pushed_at in pushes:
                ep = store.get_episode(ep_id)
                assert ep.status == "ok" and len(ep.turns) == 4 > turns_then and ep.finished_at > pushed_at
                for agent in ("alice", "bob"):
                    served = {a.adapter_version for t in ep.turns for a in t.actions if a.agent == agent}
                    assert len(served) == 1 and served.pop() < version, (ep_id, agent)
        for ep in episodes:  # every episode of the run: one version per agent
            for agent in ("alice", "bob"):
                assert len({a.adapter_version for t in ep.turns for a in t.actions if a.agent == agent}) == 1
        assert max(r["charts/staleness_max"] for r in rows) <= 2  # ahead bounds the staleness
    finally:
        for p in procs:
            p.stop(timeout=10)


def _ckpt_record(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["online_async"]


def _running(traces: Path) -> bool:
    with TraceStore(traces) as store:
        return bool(store.list_episodes(status="running"))


def test_kill_9_then_resume_trains_each_episode_once(tmp_path):
    """Killed after its first checkpoint while episodes run: the resumed run marks them
    interrupted, collects their plan entries again, trains every slice once and each ok episode
    of the run exactly once, and the metrics rows are 1..4 without a gap or a repeat."""
    procs, team_path = start_team(tmp_path, "toy", ("helper", "main"), max_tokens=6)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "collm_train", "online", "--async", "--team", str(team_path),
           "--model", MODEL, "--runs", str(runs), "--out", str(tmp_path / "adapters"), "--iterations", "4",
           "--episodes-per-iteration", "3", "--concurrency", "2", "--minibatch-size", "4", "--no-progress"]
    env = {**os.environ, **ENV, "COLLM_HOME": os.environ.get("COLLM_HOME", str(REPO / ".collm"))}
    try:
        first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not (list(runs.glob("*/checkpoint.pt")) and _ckpt_record(next(runs.glob("*"))).get("episodes")
                   and _running(tmp_path / "traces.db")):
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint and running episode after 300 s"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # after an update, while the next slice is being collected
        first.wait()
        (run_dir,) = runs.glob("*")
        killed_at = _ckpt_record(run_dir)["next_slice"]
        assert killed_at < 4
        resume = [*cmd, "--iterations", str(4 - killed_at), "--resume", run_dir.name]  # N more, as the sync loop
        done = subprocess.run(resume, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        print(done.stdout)  # resume: interrupted episodes marked, the team serving the checkpoint's version
        record = _ckpt_record(run_dir)
        assert record["next_slice"] == 4 and sorted(record["episodes"]) == ["0", "1", "2", "3"]
        trained = [e for ids in record["episodes"].values() for e in ids]
        assert len(trained) == len(set(trained))  # no episode trained twice
        started = json.loads((run_dir / "online_async.json").read_text())["started_at"]
        with TraceStore(tmp_path / "traces.db") as store:
            ok = {h["episode_id"]: (h["problem_id"], h["seed"]) for h in store.list_episodes(status="ok", since=started)}
            running = store.list_episodes(status="running")
        assert set(trained) == set(ok)  # nothing lost: every ok episode of the run trained
        assert len(ok) == len(set(ok.values())) == 12 and not running  # one ok episode per planned one
        rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
        assert sum(r["charts/episodes"] for r in rows) == 12
        version = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["version"]
        assert rows[-1]["charts/version"] == version  # (one more than 4 if the kill fell before a checkpoint)
        for p in procs:
            with AgentClient(p.address) as c:
                assert c.info().active_adapter.version == version
    finally:
        for p in procs:
            p.stop(timeout=10)


def test_trainer_cpu_affinity_pins_before_torch_threads():
    """--cpu-affinity pins the trainer process (os.sched_setaffinity) and torch's thread count
    follows it (config.num_threads counts the cores it may use); cores it may not use are a
    one-line error naming the available ones. In a child process: the test runner keeps its cores."""
    code = (
        "import os, torch\n"
        "from collm_train.cli import CliError, apply_cpu_affinity\n"
        "from collm_train.config import TrainConfig\n"
        "cfg = TrainConfig(cpu_affinity=[0])\n"
        "apply_cpu_affinity(cfg)\n"
        "torch.set_num_threads(cfg.num_threads)\n"
        "print(sorted(os.sched_getaffinity(0)), torch.get_num_threads())\n"
        "try:\n"
        "    apply_cpu_affinity(TrainConfig(cpu_affinity=[0, 4096]))\n"
        "except CliError as e:\n"
        "    print(e.format_message())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.strip().splitlines()
    assert first == "[0] 1"
    assert "cores [4096] are not available" in second and "available: [0]" in second


def test_async_cli_refuses_ahead_without_async(tmp_path):
    from click.testing import CliRunner

    from collm_train.cli import main

    team = tmp_path / "team.yaml"
    team.write_text(yaml.safe_dump({"task": "toy", "traces": str(tmp_path / "t.db"),
                                    "agents": {"helper": {"address": "localhost:1"}, "main": {"address": "localhost:2"}}}))
    result = CliRunner().invoke(main, ["online", "--team", str(team), "--ahead", "1"])
    assert result.exit_code == 1 and "--ahead applies to the async loop; add --async" in result.output
