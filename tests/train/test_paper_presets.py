"""Issue 28 item 1: `preset: paper` per task, the paper's log-prob rule, MAGRPO's within-group
standardisation under every spelling, the paper's pool schedule, and the stale correction of an
update's later steps. Expected values are written out here (not read from collm_train/paper.py),
so a wrong table entry fails."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

from collm_train import trainer as trainer_mod
from collm_train.algorithms import get_algorithm
from collm_train.cli import main
from collm_train.config import TrainConfig
from collm_train.data import build_batch
from collm_train.returns import normalize_by_group, td0_targets
from collm_train.schedule import plan_steps
from collm_train.trainer import Trainer
from tests.train.conftest import action, chain_episode, tiny_llama, tree_episode

AGENTS = ["helper", "main"]
FIELDS = ("lr", "critic_lr", "rollout_buffer_size", "minibatch_size", "num_generations", "gamma",
          "temperature", "top_p", "top_k", "max_new_tokens", "reward_shift", "early_stop_threshold")
DEFAULT_CRITIC_LR = TrainConfig().critic_lr  # MAGRPO has no critic: the preset leaves it alone
# (task, algo): the FIELDS values, from the task repositories' configs (docs/paper-fidelity.md)
PAPER = {
    ("housebuild", "cc"): (5e-6, 5e-6, 1, 1, 1, 0.9, 0.6, 0.6, 0, 512, -1.0, 0.0),
    ("housebuild", "dc"): (5e-6, 5e-6, 1, 1, 1, 0.9, 0.6, 0.6, 0, 512, -1.0, 0.0),
    ("housebuild", "magrpo"): (1e-5, DEFAULT_CRITIC_LR, 1, 1, 2, 0.9, 0.6, 0.6, 0, 512, -1.0, -0.1),
    ("strbuild", "cc"): (2.5e-6, 2.5e-6, 1, 1, 1, 0.9, 0.6, 0.6, 0, 512, -2.0, -0.1),
    ("strbuild", "dc"): (2.5e-6, 2.5e-6, 1, 1, 1, 0.9, 0.6, 0.6, 0, 512, -2.0, -0.1),
    ("strbuild", "magrpo"): (5e-6, DEFAULT_CRITIC_LR, 1, 1, 2, 0.9, 0.6, 0.6, 0, 512, -2.0, -0.1),
    ("coding", "cc"): (5e-6, 5e-6, 4, 4, 1, 0.9, 0.7, 0.9, 0, 256, -4.0, -0.2),
    ("coding", "dc"): (5e-6, 5e-6, 4, 4, 1, 1.0, 0.6, 0.6, 0, 256, -4.0, -0.2),
    ("coding", "magrpo"): (2e-5, DEFAULT_CRITIC_LR, 2, 2, 4, 1.0, 0.6, 0.6, 0, 256, -4.0, -0.2),
    ("writing", "cc"): (5e-6, 5e-6, 4, 4, 1, 0.9, 0.7, 0.9, 0, 256, 0.0, None),
    ("writing", "dc"): (5e-6, 5e-6, 4, 4, 1, 0.9, 0.7, 0.9, 0, 256, 0.0, None),
    ("writing", "magrpo"): (5e-6, DEFAULT_CRITIC_LR, 1, 1, 4, 0.9, 0.7, 0.9, 0, 256, 0.0, None),
}


# ----------------------------------------------------------------------------- the presets
@pytest.mark.parametrize("task, algo", sorted(PAPER))
def test_paper_preset_per_task(task, algo):
    c = TrainConfig(algo=algo, task=task)
    assert tuple(getattr(c, f) for f in FIELDS) == PAPER[(task, algo)]
    # the paper's log-prob rule, pi_old recomputed under it, each buffer used once
    assert (c.use_sampling_params, c.off_policy, c.epochs, c.adv_norm) == (
        False, "none", 1, "agent_turn" if algo != "magrpo" else "group")
    assert TrainConfig(**c.model_dump()) == c  # what `config` prints reloads to the same config


def test_dc_value_clip_follows_the_task_config():
    assert TrainConfig(algo="dc", task="housebuild").value_clip == 0.05  # house_build_iac:47
    assert TrainConfig(algo="dc", task="coding").value_clip == 0.2  # iac_he:50


def test_monte_carlo_baselines_share_magrpos_settings():
    for algo in ("marloo", "maremax", "mareinforce"):
        c = TrainConfig(algo=algo, task="strbuild")
        assert (c.lr, c.num_generations, c.rollout_buffer_size) == (5e-6, 2, 1)


def test_explicit_fields_win_and_other_tasks_or_presets_get_nothing():
    c = TrainConfig(algo="cc", task="housebuild", lr=1e-4, use_sampling_params=True, off_policy="auto")
    assert (c.lr, c.critic_lr, c.use_sampling_params, c.rollout_buffer_size) == (1e-4, 5e-6, True, 1)
    plain = TrainConfig(algo="cc")
    for other in (TrainConfig(algo="cc", task="build"), TrainConfig(preset="collm", task="housebuild")):
        assert (other.lr, other.rollout_buffer_size, other.temperature) == (plain.lr, None, None)
        assert other.use_sampling_params is True


@pytest.mark.parametrize("task, lr", [("housebuild", "5.0e-06"), ("strbuild", "2.5e-06"),
                                      ("coding", "5.0e-06"), ("writing", "5.0e-06")])
def test_config_command_prints_the_paper_preset(task, lr):
    out = CliRunner().invoke(main, ["config", "--algo", "cc", "--preset", "paper", "--task", task])
    assert out.exit_code == 0, out.output
    lines = {ln.split(":")[0]: ln for ln in out.output.splitlines() if not ln.startswith("#")}
    pool = "1" if task in ("housebuild", "strbuild") else "4"
    assert lines["rollout_buffer_size"].startswith(f"rollout_buffer_size: {pool}  # paper: ")
    assert lines["minibatch_size"].startswith(f"minibatch_size: {pool}  # paper: ")
    assert lines["lr"].startswith(f"lr: {lr}  # paper: ") and lines["critic_lr"].startswith(f"critic_lr: {lr}")
    assert lines["use_sampling_params"].startswith("use_sampling_params: false")
    assert f"what the paper ran on {task}" in out.output


# ----------------------------------------------------------------------------- log-prob rule
def _sampled_episode(temperature=0.6, top_p=0.6):
    ep = chain_episode(AGENTS, [1.0, 0.0], episode_id="s")
    for t in ep.turns:
        t.actions = [action(a.agent, a.prompt_token_ids, a.response_token_ids, temperature=temperature,
                            top_p=top_p) for a in t.actions]
    return ep


def test_paper_rule_scores_raw_logits_at_temperature_one():
    """Actions sampled at 0.6 / 0.6 are scored by log_softmax of the raw logits, summed."""
    model = tiny_llama()
    batch = build_batch([_sampled_episode()], AGENTS, 0)
    samples = [s for s in batch.samples if s.agent == "helper"]
    expected = []
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([s.prompt_ids + s.response_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            P = len(s.prompt_ids)
            expected.append(sum(float(logp[P - 1 + j, tok]) for j, tok in enumerate(s.response_ids)))
    # same seed, same weights; a fresh LoRA adapter (B = 0) leaves the outputs unchanged
    paper = Trainer(TrainConfig(algo="cc", task="housebuild"), tiny_llama(), AGENTS)
    got = paper._logprobs("helper", samples).seq_logp.detach()
    assert got.tolist() == pytest.approx(expected, abs=1e-4)
    ours = Trainer(TrainConfig(algo="cc"), tiny_llama(), AGENTS)._logprobs("helper", samples).seq_logp.detach()
    assert not torch.allclose(ours, got, atol=1e-3)  # the nucleus rule scores something else


def _record_policy_loss(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = trainer_mod.policy_loss

    def spy(logp, logp_old, adv, use_ratio, *a, **k):
        calls.append(dict(logp=logp.detach().clone(), logp_old=logp_old.clone(), use_ratio=use_ratio.clone()))
        return real(logp, logp_old, adv, use_ratio, *a, **k)

    monkeypatch.setattr(trainer_mod, "policy_loss", spy)
    return calls


def test_pi_old_is_computed_under_the_same_rule(monkeypatch):
    """The logged behaviour log-probs are fake (-1 a token); the paper preset's pi_old is the
    learner's temperature-1 log-prob, so the first step's ratio is exactly 1."""
    calls = _record_policy_loss(monkeypatch)
    Trainer(TrainConfig(algo="cc", task="housebuild"), tiny_llama(), AGENTS).update([_sampled_episode()])
    first = calls[0]
    assert torch.allclose(first["logp"], first["logp_old"], atol=1e-5)
    assert not first["use_ratio"].any()  # fresh actions, first step: the paper's -A log pi


# ----------------------------------------------------------------------------- MAGRPO standardisation
@pytest.mark.parametrize("algo", ["magrpo", "marloo", "maremax", "mareinforce"])
@pytest.mark.parametrize("spelling", [True, "auto", "group"])
def test_monte_carlo_standardises_within_group_under_every_spelling(algo, spelling):
    cfg = TrainConfig(algo=algo, normalize_adv=spelling)
    assert cfg.adv_norm == "group"
    batch = build_batch([tree_episode(), tree_episode(episode_id="t2")], AGENTS, 0)
    adv, _ = get_algorithm(algo).train_advantages(batch, None, cfg)
    raw, _ = get_algorithm(algo).train_advantages(batch, None, TrainConfig(algo=algo, normalize_adv="off"))
    assert adv.tolist() == pytest.approx(normalize_by_group(raw, [s.group for s in batch.samples]).tolist())
    for g in batch.groups:  # each group of K = 2: mean 0, population std 1 (returns differ here)
        assert float(adv[g].mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(adv[g].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_agent_turn_is_refused_for_monte_carlo():
    with pytest.raises(ValidationError, match="within each sibling group"):
        TrainConfig(algo="magrpo", normalize_adv="agent_turn")
    assert TrainConfig(algo="cc", normalize_adv=True).adv_norm == "agent_turn"


# ----------------------------------------------------------------------------- the pool schedule
def test_singleton_pools_one_step_per_sample_in_play_order():
    eps = [chain_episode(AGENTS, [1.0, 0.5, 0.0, 2.0], episode_id=f"e{i}") for i in range(2)]
    batch = build_batch(eps, AGENTS, 0)
    cfg = TrainConfig(algo="cc", task="housebuild")
    steps = plan_steps(batch, range(len(batch)), cfg, torch.Generator().manual_seed(0), by_group=False)
    assert steps == [[i] for i in range(len(batch))]  # 16 steps: e0 t0 helper, e0 t0 main, ...
    # singleton pools: TD(0) advantages pass through unstandardised (CoMLRL: numel() > 1)
    values = torch.linspace(-1, 1, len(batch))
    adv, _ = get_algorithm("cc").train_advantages(batch, values, cfg)
    _, raw = td0_targets(batch.tensor("reward"), values, batch.children, cfg.gamma)
    assert adv.tolist() == pytest.approx(raw.tolist())


def test_pools_of_four_split_per_turn_and_standardise_there():
    eps = [chain_episode(AGENTS, [float(i), 1.0 - i], episode_id=f"e{i}") for i in range(4)]
    batch = build_batch(eps, AGENTS, 0)
    cfg = TrainConfig(algo="cc", task="coding")  # pool 4, step 4, 2 turns
    steps = plan_steps(batch, range(len(batch)), cfg, torch.Generator().manual_seed(0), by_group=False)
    # each agent: 8 samples -> 2 pools of (2 episodes x 2 turns) -> a step per (pool, turn) of 2
    assert len(steps) == 8
    for mb in steps:
        assert len(mb) == 2 and len({(batch.samples[i].agent, batch.samples[i].turn_index) for i in mb}) == 1
    values = torch.zeros(len(batch))
    adv, _ = get_algorithm("cc").train_advantages(batch, values, cfg)
    for mb in steps:  # each step's samples are exactly one standardisation pool
        assert float(adv[mb].mean()) == pytest.approx(0.0, abs=1e-6)


def test_monte_carlo_units_are_groups():
    batch = build_batch([tree_episode()], AGENTS, 0)
    cfg = TrainConfig(algo="magrpo", task="housebuild")  # pool 1 node, step 1 node
    steps = plan_steps(batch, range(len(batch)), cfg, torch.Generator().manual_seed(0), by_group=True)
    assert sorted(sorted(s) for s in steps) == sorted(sorted(g) for g in batch.groups)


# ----------------------------------------------------------------------------- later steps are stale
@pytest.mark.parametrize("kw", [dict(epochs=2, minibatch_size=64), dict(epochs=1, minibatch_size=2)])
def test_steps_after_the_first_use_the_ratio_against_pre_update_logp(monkeypatch, kw):
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = Trainer._minibatch_step

    def spy(self, batch, mb_idx, b_logp_old, b_adv, b_v_target, b_ref_tok, stats, b_use_ratio, *rest):
        steps.append((b_use_ratio[mb_idx].clone(), b_logp_old[mb_idx].clone()))
        return real(self, batch, mb_idx, b_logp_old, b_adv, b_v_target, b_ref_tok, stats, b_use_ratio, *rest)

    monkeypatch.setattr(Trainer, "_minibatch_step", spy)
    eps = [chain_episode(AGENTS, [1.0, 0.0], episode_id=f"e{i}") for i in range(2)]
    m = Trainer(TrainConfig(algo="cc", **kw), tiny_llama(), AGENTS).update(eps)
    assert m["charts/steps"] == len(steps) >= 2
    assert not steps[0][0].any()  # step 1: fresh actions, the paper's -A log pi
    assert all(use.all() for use, _ in steps[1:])  # the learner moved: min(rho, 1) A log pi
    # pi_old stays the log-prob BEFORE the update (these fresh actions' logged one: -1 a token)
    assert all(torch.equal(old, torch.full_like(old, -2.0)) for _, old in steps)
    assert m["charts/ratio_frac"] == pytest.approx(1 - len(steps[0][0]) / sum(len(u) for u, _ in steps))


# ----------------------------------------------------------------------------- the CLI and the team
def _team(tmp_path, task="housebuild", group_size=1, temperature=0.7):
    import yaml

    from collm_serve.team import load_team_config

    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump({"task": task, "group_size": group_size, "traces": str(tmp_path / "t.db"),
                                    "agents": {a: {"address": f"127.0.0.1:{5001 + i}",
                                                   "sampling": {"temperature": temperature, "top_p": 0.6,
                                                                "max_tokens": 512}}
                                               for i, a in enumerate(AGENTS)}}))
    return path, load_team_config(path)


def test_training_refuses_a_task_other_than_the_teams(tmp_path):
    path, _ = _team(tmp_path, task="writing")
    (tmp_path / "t.db").write_bytes(b"")
    out = CliRunner().invoke(main, ["--algo", "cc", "--task", "housebuild", "--team", str(path),
                                    "--traces", str(tmp_path / "t.db")])
    assert out.exit_code != 0 and "--task housebuild but the team" in out.output
    assert "pass --task writing" in out.output


def test_preset_settings_the_team_does_not_use_are_named(tmp_path):
    from collm_train.cli import preset_vs_team

    _, team = _team(tmp_path, group_size=4, temperature=0.7)
    lines = preset_vs_team(TrainConfig(algo="magrpo", task="housebuild"), team)  # K 2, 0.6 / 0.6, 512
    assert lines[0] == "num_generations 2 but group_size 4"
    assert all("temperature 0.6 but temperature 0.7" in ln and "top_p" not in ln for ln in lines[1:])
    assert len(lines) == 1 + len(AGENTS)
    _, same = _team(tmp_path, group_size=2, temperature=0.6)
    assert preset_vs_team(TrainConfig(algo="magrpo", task="housebuild"), same) == []
    assert preset_vs_team(TrainConfig(algo="magrpo"), team) == []  # nothing recorded, nothing to say


def test_the_docs_table_cites_every_value_of_the_preset():
    """docs/paper-fidelity.md's per-task table and collm_train/paper.py cannot drift apart."""
    from pathlib import Path

    from collm_train.paper import PAPER_TASKS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "paper-fidelity.md").read_text()
    label = {"cc": "CC (MAAC)", "dc": "DC (IAC)", "mc": "MAGRPO"}
    for task, fams in PAPER_TASKS.items():
        for fam, vals in fams.items():
            (row,) = [ln for ln in doc.splitlines() if ln.startswith(f"| {task} | {label[fam]} |")]
            cells = [c.strip() for c in row.strip("|").split("|")]
            for name, (value, src) in vals.items():
                line = src.rsplit(":", 1)[1].split(" ")[0] if src.split(" ", 1)[0] in ("MC", "CG", "W") else None
                shown = "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
                if name == "top_k" and value == 0:
                    shown = "none (0)"
                hits = [c for c in cells if c.startswith(shown + " ") or c == shown]
                assert hits, f"{task} {fam} {name}={value} not in the docs row"
                if line and line[0].isdigit():
                    assert any(c.endswith(f":{line}") or f":{line} " in c for c in hits), (task, fam, name, line)
