"""One update moves what must move (LoRA, value heads) and nothing else; saving and resuming."""

from __future__ import annotations

import json
import math

import pytest
import torch

from collm_serve.traces.records import SamplingRecord
from collm_train.config import TrainConfig
from collm_train.trainer import Trainer
from tests.train.conftest import chain_episode, tiny_llama, tree_episode

AGENTS = ["helper", "main"]


def _snapshot(trainer: Trainer):
    lora, frozen, heads = {}, {}, {}
    for (device, role), host in trainer.models.hosts.items():
        for n, p in host.model.named_parameters():
            (lora if "lora_" in n else frozen)[f"{role}/{n}"] = p.detach().clone()
    for name, c in trainer.models.critics.items():
        for n, p in c.head.named_parameters():
            heads[f"{name}/{n}"] = p.detach().clone()
    return lora, frozen, heads


@pytest.mark.parametrize("algo", ["cc", "dc", "magrpo"])
def test_update_moves_lora_and_heads_not_base(algo):
    # two optimizer steps (LoRA B starts at 0, so A only gets a gradient from the 2nd step on)
    cfg = TrainConfig(algo=algo, lr=1e-3, critic_lr=1e-3, epochs=2, minibatch_size=64)
    trainer = Trainer(cfg, tiny_llama(), AGENTS, base_model_id="tiny-llama")
    lora0, frozen0, heads0 = _snapshot(trainer)
    n_adapters = {n.split(".")[-2] for n in lora0}
    assert n_adapters == ({"helper", "main", "critic__joint"} if algo == "cc" else
                          {"helper", "main", "critic__helper", "critic__main"} if algo == "dc" else
                          {"helper", "main"})
    assert len(trainer.models.hosts) == 1  # actors and critics share one frozen base
    metrics = trainer.update([tree_episode(episode_id="t0"), tree_episode(episode_id="t1")])
    lora1, frozen1, heads1 = _snapshot(trainer)
    unmoved = [n for n in lora0 if torch.equal(lora0[n], lora1[n])]
    assert not unmoved, f"LoRA parameters that did not move: {unmoved[:5]}"
    assert all(torch.equal(frozen0[n], frozen1[n]) for n in frozen0), "a frozen base weight moved"
    assert all(not torch.equal(heads0[n], heads1[n]) for n in heads0), "a value-head weight did not move"
    assert len(heads0) == {"cc": 4, "dc": 8, "magrpo": 0}[algo]
    for key in ("losses/actor", "losses/critic", "charts/return", "charts/explained_variance",
                "charts/staleness", "charts/ess", "charts/clipfrac"):
        assert key in metrics
    assert metrics["charts/return"] == pytest.approx(2.0)
    assert metrics["charts/samples"] == 24


@pytest.mark.parametrize("algo", ["cc", "dc", "magrpo"])
def test_update_reports_the_tokens_it_trained(algo):
    """charts/actor_tokens and charts/critic_tokens count the rows that got a forward + backward:
    every actor row (prompt + response) per epoch, each distinct critic history once per forward
    (CC: the agents of a turn share one joint history). bench/peer.py divides these by time."""
    from collm_train.data import build_batch

    episodes = [tree_episode(episode_id="t0"), tree_episode(episode_id="t1")]
    cfg = TrainConfig(algo=algo, epochs=2, minibatch_size=64)  # one minibatch, one forward per critic
    trainer = Trainer(cfg, tiny_llama(), AGENTS, base_model_id="tiny-llama")
    batch = build_batch(episodes, AGENTS, 0, cfg.critic_max_len, cfg.max_staleness)
    m = trainer.update(episodes)
    actor = sum(len(s.prompt_ids) + len(s.response_ids) for s in batch.samples)
    assert m["charts/actor_tokens"] == 2 * actor
    if algo == "magrpo":
        assert m["charts/critic_tokens"] == 0
        return
    per_critic: dict[str, set] = {}
    for s in batch.samples:
        h = tuple(trainer.algo.history(s))
        per_critic.setdefault("joint" if algo == "cc" else s.agent, set()).add(h)
    critic = sum(len(h) for hs in per_critic.values() for h in hs)
    assert m["charts/critic_tokens"] == 2 * critic
    if algo == "cc":  # shared joint histories are counted once, not per agent
        assert critic < sum(len(trainer.algo.history(s)) for s in batch.samples)


def test_dc_value_head_on_actor():
    cfg = TrainConfig(algo="dc", critic_on_actor=True, lr=1e-3, epochs=2)
    trainer = Trainer(cfg, tiny_llama(), AGENTS)
    lora0, _, heads0 = _snapshot(trainer)
    assert {n.split(".")[-2] for n in lora0} == {"helper", "main"}  # no critic adapters
    trainer.update([tree_episode()])
    lora1, _, heads1 = _snapshot(trainer)
    assert all(not torch.equal(heads0[n], heads1[n]) for n in heads0)
    assert all(not torch.equal(lora0[n], lora1[n]) for n in lora0)


def test_cc_critic_sees_joint_history_dc_own():
    ep = tree_episode()
    cc = Trainer(TrainConfig(algo="cc"), tiny_llama(), AGENTS)
    from collm_train.data import build_batch

    batch = build_batch([ep], AGENTS)
    v = cc._old_values(batch)
    for i in range(0, len(batch), 2):  # helper, main of the same turn row: one joint V(h_t)
        assert batch.samples[i].agent == "helper" and v[i] == v[i + 1]
    dc = Trainer(TrainConfig(algo="dc"), tiny_llama(), AGENTS)
    v = dc._old_values(batch)
    assert v[0] != v[1]


def test_saved_adapter_reloads_in_peft(tmp_path):
    from peft import PeftModel

    from collm_serve.adapters.manifest import read_manifest, sha256_file

    trainer = Trainer(TrainConfig(algo="cc", lr=1e-2, epochs=2), tiny_llama(), AGENTS,
                      base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    metrics = trainer.update([tree_episode()])
    paths = trainer.save_adapters(tmp_path / "adapters", version=1, metrics=metrics)
    assert trainer.version == 1 and not trainer.dirty
    folder = paths["main"]
    assert folder == tmp_path / "adapters" / "main" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "collm_manifest.json"]
    assert [p.name for p in (tmp_path / "adapters" / "main").iterdir()] == ["v1"]  # no temp leftovers
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    m = read_manifest(folder)
    assert (m.name, m.version, m.algorithm, m.step) == ("main", 1, "cc", 1)
    assert m.sha256 == sha256_file(folder / "adapter_model.safetensors")
    assert m.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"

    ids = torch.tensor([[5, 9, 2, 11, 12]])
    for agent in AGENTS:
        reloaded = PeftModel.from_pretrained(tiny_llama(), str(paths[agent])).eval()
        with torch.no_grad():
            expected = trainer.models.actors[agent].host.activate(agent)(input_ids=ids).logits
            got = reloaded(input_ids=ids).logits
            base = tiny_llama()(input_ids=ids).logits
        assert torch.allclose(got, expected, atol=1e-6)
        assert not torch.allclose(got, base, atol=1e-4)  # the adapter is not a no-op
    with pytest.raises(FileExistsError, match="immutable"):
        trainer.save_adapters(tmp_path / "adapters", version=1)


def test_checkpoint_resume_is_exact(tmp_path):
    cfg = TrainConfig(algo="dc", lr=1e-3, minibatch_size=4)
    eps = [tree_episode()]
    a = Trainer(cfg, tiny_llama(), AGENTS)
    a.update(eps)
    a.save_checkpoint(tmp_path / "ckpt.pt")
    b = Trainer(cfg, tiny_llama(), AGENTS)
    b.load_checkpoint(tmp_path / "ckpt.pt")
    assert (b.step, b.version, b.dirty) == (1, 0, True)
    ma, mb = a.update(eps), b.update(eps)
    assert ma["losses/actor"] == pytest.approx(mb["losses/actor"], abs=1e-6)
    la, _, ha = _snapshot(a)
    lb, _, hb = _snapshot(b)
    assert all(torch.allclose(la[n], lb[n], atol=1e-7) for n in la)
    assert all(torch.allclose(ha[n], hb[n], atol=1e-7) for n in ha)
    with pytest.raises(ValueError, match="build a matching Trainer"):
        Trainer(TrainConfig(algo="cc"), tiny_llama(), AGENTS).load_checkpoint(tmp_path / "ckpt.pt")


def test_on_policy_ratio_is_one_and_stale_data_uses_behaviour():
    # mareinforce: these are K = 1 chains, which magrpo refuses (it would learn nothing from them)
    # rescore always: measure the learner vs the logged log-probs on fresh data (auto trusts them)
    trainer = Trainer(TrainConfig(algo="mareinforce", off_policy="behaviour", rescore="always"), tiny_llama(), AGENTS)
    prompts = [[5, 9, 2, 11], [7, 8]]
    episodes = []
    g = torch.Generator().manual_seed(0)
    for k in range(2):
        turn_prompts, turn_resp, lps = {}, {}, {}
        for i, agent in enumerate(AGENTS):
            resp, lp = trainer.sample(agent, [prompts[i]], 4, temperature=0.7, top_p=0.9, generator=g)
            turn_prompts[agent], turn_resp[agent], lps[agent] = prompts[i], resp[0], lp[0]
        ep = chain_episode(AGENTS, [float(k)], [turn_prompts], [turn_resp], episode_id=f"e{k}")
        for a in ep.turns[0].actions:
            a.logprobs = lps[a.agent]
            a.sampling = SamplingRecord(temperature=0.7, top_p=0.9, top_k=0, max_tokens=4)
        episodes.append(ep)
    m = trainer.update(episodes)
    assert m["charts/logp_gap"] < 1e-4 and m["charts/ess"] == pytest.approx(1.0)
    assert m["losses/approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["charts/rescored_frac"] == 1.0



def test_off_policy_modes_pick_logp_old():
    """Logged log-probs here are fake (-1 per token), far from the model's: rho vs them is ~e^-9.

    PPO clipping on every action (preset collm): the paper preset applies a ratio to stale
    actions only (test_truncated_is_only_on_stale_actions); mareinforce since these are K = 1."""
    eps = [chain_episode(AGENTS, [float(k)], episode_id=f"e{k}") for k in range(2)]
    big = dict(algo="mareinforce", minibatch_size=64, preset="collm")
    auto = Trainer(TrainConfig(rescore="always", **big), tiny_llama(), AGENTS)
    m = auto.update(eps)  # fresh data (version 0 == learner, learner unchanged): recomputed logp_old
    assert m["charts/clipfrac"] == 0.0 and m["charts/staleness"] == 0.0
    assert m["charts/logp_gap"] > 5  # reported, although it does not enter the ratio
    m = auto.update(eps)  # learner moved since version 0 was sampled: behaviour log-probs
    assert m["charts/clipfrac"] == 1.0
    # rescore auto (default) trusts the log for fresh data: pi_old is the (here fake) logged
    # log-prob, nothing is rescored, so the gap is not measured (nan), not reported as 0
    m = Trainer(TrainConfig(**big), tiny_llama(), AGENTS).update(eps)
    assert m["charts/clipfrac"] == 1.0 and m["charts/rescored_frac"] == 0.0
    assert math.isnan(m["charts/logp_gap"]) and math.isnan(m["charts/ess"])
    m = Trainer(TrainConfig(off_policy="behaviour", **big), tiny_llama(), AGENTS).update(eps)
    assert m["charts/clipfrac"] == 1.0
    stale = Trainer(TrainConfig(max_staleness=1, **big), tiny_llama(), AGENTS)
    stale.version = 2
    new = chain_episode(AGENTS, [1.0], episode_id="new")
    for a in new.turns[0].actions:
        a.adapter_version = 2
    m = stale.update(eps + [new])
    assert m["charts/dropped_stale"] == 4 and m["charts/samples"] == 2
    with pytest.raises(ValueError, match="no trainable"):
        stale.update([])
    with pytest.raises(ValueError, match="max_staleness"):
        stale.update(eps)


def test_fresh_learner_treats_newer_served_versions_as_stale(tmp_path):
    """A fresh trainer (base model, version 0) on traces served by v3 of an earlier run: the
    reported staleness is >= 0 and the actions are stale (pi_old = the logged behaviour
    log-probs, so the fake -1/token log-probs make every PPO ratio clip), not on-policy
    (recomputed pi_old, ratio 1, nothing clipped). Its first publish continues the numbering
    in the adapter folder (v4), from which v3's actions are 1 version old."""
    big = dict(algo="mareinforce", minibatch_size=64, preset="collm")
    eps = [chain_episode(AGENTS, [float(k)], episode_id=f"e{k}") for k in range(2)]
    for ep in eps:
        for a in ep.turns[0].actions:
            a.adapter_version = 3
    fresh = Trainer(TrainConfig(**big), tiny_llama(), AGENTS)
    m = fresh.update(eps)
    assert fresh.version == 0 and m["charts/staleness"] == 3.0 and m["charts/staleness_max"] == 3.0
    assert m["charts/clipfrac"] == 1.0  # stale: behaviour log-probs, not the on-policy -A log pi
    assert m["charts/rescored_frac"] == 1.0  # stale actions are rescored (rescore auto)
    # rescore always: a fresh action's pi_old is recomputed (auto would read the fake log)
    on_policy = Trainer(TrainConfig(rescore="always", **big), tiny_llama(), AGENTS)
    for ep in eps:
        for a in ep.turns[0].actions:
            a.adapter_version = 0
    assert on_policy.update(eps)["charts/clipfrac"] == 0.0  # the contrast: base-served data is fresh
    assert Trainer(TrainConfig(**big), tiny_llama(), AGENTS).update(eps)["charts/rescored_frac"] == 0.0
    for agent in AGENTS:
        (tmp_path / agent / "v3").mkdir(parents=True)  # an earlier run's versions
    fresh.save_adapters(tmp_path)
    assert fresh.version == 4 and (tmp_path / "main" / "v4").is_dir()


def test_load_adapters_round_trip(tmp_path):
    a = Trainer(TrainConfig(algo="magrpo", lr=1e-2, epochs=2), tiny_llama(), AGENTS)
    a.update([tree_episode()])
    a.save_adapters(tmp_path, version=3)
    b = Trainer(TrainConfig(algo="magrpo"), tiny_llama(), AGENTS)
    b.load_adapters(tmp_path, version=3)
    assert (b.version, b.dirty) == (3, False)
    la, _, _ = _snapshot(a)
    lb, _, _ = _snapshot(b)
    assert all(torch.equal(la[n], lb[n]) for n in la)
    (tmp_path / "main" / "v3" / "adapter_model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256"):
        b.load_adapters(tmp_path, version=3)


def test_micro_batches_accumulate_exactly():
    """Gradient accumulation over micro-batches gives the same step as one big forward."""
    eps = [tree_episode()]
    whole = Trainer(TrainConfig(algo="dc", lr=1e-3, minibatch_size=12), tiny_llama(), AGENTS)
    micro = Trainer(TrainConfig(algo="dc", lr=1e-3, minibatch_size=12, micro_batch_size=2), tiny_llama(), AGENTS)
    mw, mm = whole.update(eps), micro.update(eps)
    assert mw["losses/critic"] == pytest.approx(mm["losses/critic"], abs=1e-6)
    lw, _, hw = _snapshot(whole)
    lm, _, hm = _snapshot(micro)
    assert all(torch.allclose(lw[n], lm[n], atol=1e-6) for n in lw)
    assert all(torch.allclose(hw[n], hm[n], atol=1e-6) for n in hw)


def test_base_from_path_separate_critic_base_and_kl(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    cfg = TrainConfig(algo="cc", critic_share_base=False, kl_coef=0.1, lr=1e-2, epochs=2)
    trainer = Trainer(cfg, str(tmp_path / "base"), AGENTS)
    assert trainer.base_model_id == str(tmp_path / "base")
    assert sorted(role for _, role in trainer.models.hosts) == ["actor", "critic"]
    m = trainer.update([tree_episode()])
    assert m["losses/kl"] >= 0 and m["losses/kl"] == m["losses/kl"]  # finite, not nan
    assert m["losses/kl"] > 0  # second epoch: adapters moved away from the base


def test_agent_names_are_checked():
    for bad in ["", "a.b", "lora", "default", "critic__x", "x/y"]:
        with pytest.raises(ValueError, match="agent name"):
            Trainer(TrainConfig(algo="magrpo"), tiny_llama(), [bad])
    with pytest.raises(ValueError, match="unique"):
        Trainer(TrainConfig(algo="magrpo"), tiny_llama(), ["x", "x"])


def test_separate_critic_base_from_a_module():
    trainer = Trainer(TrainConfig(algo="dc", critic_share_base=False), tiny_llama(), AGENTS)
    hosts = trainer.models.hosts
    assert set(hosts) == {("cpu", "actor"), ("cpu", "critic")}
    for (_, role), host in hosts.items():
        names = {n.split(".")[-2] for n, _ in host.model.named_parameters() if "lora_" in n}
        expected = {"helper", "main"} if role == "actor" else {"critic__helper", "critic__main"}
        assert names == expected and set(host.model.peft_config) == expected
    assert hosts[("cpu", "actor")].base is not hosts[("cpu", "critic")].base
