"""Data-parallel training: `torchrun --nproc-per-node 2 -m collm_train` (gloo, CPU) writes the same
adapters as one process on the same traces; the work split itself (DataParallel.shard)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from collm_serve.traces import TraceStore
from collm_serve.traces.records import EPISODE_OK, EpisodeRecord
from collm_train.distributed import DataParallel
from tests.train.conftest import action, chain_episode, tree_episode

REPO = Path(__file__).resolve().parents[2]
AGENTS = ["helper", "main"]
ATOL = 1e-5  # gloo sums in another order than one process accumulates; observed max diff ~1e-7


def _episodes() -> list[EpisodeRecord]:
    """Trees (MC groups, shared joint histories) and chains of random lengths, task 'toy'."""
    rng = random.Random(0)
    out = []
    for e in range(2):
        ep = tree_episode(AGENTS, episode_id=f"tree{e}")
        for t in ep.turns:
            t.reward = float(rng.randint(0, 3))
        out.append(ep)
    for e in range(2):
        prompts = [{a: [rng.randrange(1, 500) for _ in range(rng.randint(3, 12))] for a in AGENTS} for _ in range(2)]
        responses = [{a: [rng.randrange(1, 500) for _ in range(rng.randint(2, 8))] for a in AGENTS} for _ in range(2)]
        out.append(chain_episode(AGENTS, [rng.random(), rng.random()], prompts, responses, episode_id=f"chain{e}"))
    for ep in out:
        ep.task, ep.status = "toy", EPISODE_OK
        for t in ep.turns:
            t.actions = [action(a.agent, a.prompt_token_ids, a.response_token_ids,
                                [-0.5 - 0.1 * j for j in range(len(a.response_token_ids))]) for a in t.actions]
    return out


@pytest.fixture
def setup(tmp_path):
    traces = tmp_path / "traces.db"
    with TraceStore(str(traces)) as store:
        for ep in _episodes():
            store.import_episode(ep)
    team = tmp_path / "team.yaml"
    team.write_text(yaml.safe_dump({"task": "toy", "traces": str(traces),
                                    "agents": {a: {"address": f"127.0.0.1:{5001 + i}"} for i, a in enumerate(AGENTS)}}))
    # every code path that crosses ranks: critic, KL (ragged reference rows), normalised advantages,
    # micro-batches, several clipped optimizer steps, a second update (dirty learner, checkpoint)
    config = tmp_path / "train.yaml"
    # max_grad_norm: the paper preset clips nothing; set it so clipping crosses ranks too
    config.write_text(yaml.safe_dump({"kl_coef": 0.05, "normalize_adv": True, "micro_batch_size": 4, "max_grad_norm": 1.0,
                                      "minibatch_size": 8, "epochs": 2, "lr": 1e-3, "critic_lr": 1e-3}))
    return tmp_path, traces, team, config


def _args(tmp: Path, traces, team, config, name: str) -> list[str]:
    return ["--algo", "cc", "--traces", str(traces), "--team", str(team), "--config", str(config),
            "--model", "embedded:tiny-llama", "--out", str(tmp / name / "adapters"), "--runs", str(tmp / name / "runs"),
            "--iterations", "2"]


def _adapter(root: Path, agent: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(root / "adapters" / agent / "v1" / "adapter_model.safetensors"))


def _metrics(root: Path) -> list[dict]:
    return [json.loads(ln) for f in sorted((root / "runs").rglob("metrics.jsonl")) for ln in f.read_text().splitlines()]


def test_torchrun_two_processes_match_one(setup):
    tmp, traces, team, config = setup
    from collm_train.cli import main

    one = CliRunner().invoke(main, _args(tmp, traces, team, config, "one"))
    assert one.exit_code == 0, one.output

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "collm_train", *_args(tmp, traces, team, config, "two")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-4000:]

    for agent in AGENTS:
        a1, a2 = _adapter(tmp / "one", agent), _adapter(tmp / "two", agent)
        assert a1.keys() == a2.keys() and a1
        for k in a1:
            assert torch.allclose(a1[k], a2[k], rtol=0, atol=ATOL), (agent, k, (a1[k] - a2[k]).abs().max())
        # trained at all: LoRA B starts at zero
        assert any(k.endswith("lora_B.weight") and a1[k].abs().max() > 0 for k in a1)
    # every rank reports the all-reduced metrics: each row equals the 1-process row of its iteration
    m1 = {r["iteration"]: r for r in _metrics(tmp / "one")}
    rows = _metrics(tmp / "two")
    assert rows and {r["iteration"] for r in rows} == set(m1) == {1, 2}
    for r in rows:
        for k in ("losses/actor", "losses/critic", "losses/kl", "charts/value", "charts/adv_std", "charts/ess"):
            # nan_ok: iteration 1 trains fresh traces, which rescore=auto does not rescore (ess nan)
            assert r[k] == pytest.approx(m1[r["iteration"]][k], rel=1e-4, abs=1e-6, nan_ok=True), k
        if r["iteration"] == 2:  # the traces are a version behind v1: rescored on both ranks' shares
            assert r["charts/rescored_frac"] == 1.0 and r["charts/ess"] == r["charts/ess"]
    assert not list((tmp / "two" / "adapters").rglob("*.tmp*")), "a rank left a staging folder"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_splits_every_index_once(world):
    idx = list(range(10, 27))
    keys = [i // 2 for i in idx]  # pairs share a key, like CC's agents sharing h_t
    for by_key in (None, keys):
        parts = [DataParallel(rank=r, world_size=world).shard(idx, by_key) for r in range(world)]
        assert sorted(i for p in parts for i in p) == idx
        if by_key is not None:
            owner = {keys[idx.index(i)]: r for r, p in enumerate(parts) for i in p}
            assert all(owner[keys[idx.index(i)]] == r for r, p in enumerate(parts) for i in p)
        assert max(map(len, parts)) - min(map(len, parts)) <= 2


def test_single_process_is_a_no_op():
    dp = DataParallel()
    t = torch.arange(3.0)
    assert dp.all_reduce_(t) is t and torch.equal(t, torch.arange(3.0))
    assert dp.sum_counts({"a": [1.0, 2.0], "b": []}) == {"a": (3.0, 2), "b": (0.0, 0)}
    assert dp.is_main
    with pytest.raises(ValueError, match="rank"):
        DataParallel(rank=2, world_size=2)
