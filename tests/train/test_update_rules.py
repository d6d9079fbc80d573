"""The paper's update rules (preset `paper`, CoMLRL 1.3.6) on tiny batches, by hand (gamma = 0.9).

Each expected number is derived in the comment next to it; docs/paper-fidelity.md maps every
rule to the paper's code (file:line).
"""

from __future__ import annotations

import math

import pytest
import torch

from collm_serve.traces.records import EPISODE_OK, EpisodeRecord, TurnRecord
from collm_train.algorithms import ALGORITHMS, get_algorithm
from collm_train.algorithms.spec import GROUP_BASELINE_ALGOS
from collm_train.config import TrainConfig
from collm_train.data import GroupSizeError, build_batch, check_group_sizes, check_team_group_size
from collm_train.losses import clipped_value_loss, policy_loss
from collm_train.returns import normalize_by_group
from collm_train.trainer import Trainer
from tests.train.conftest import action, chain_episode, tiny_llama, tree_episode

AGENTS = ["helper", "main"]
approx = lambda xs, tol=1e-4: pytest.approx(xs, abs=tol)  # noqa: E731


# ----------------------------------------------------------------------------- CC / DC targets
def test_td0_then_per_agent_turn_standardisation():
    """Three 2-turn episodes, CC values by hand; advantages standardised per (agent, turn)."""
    eps = [chain_episode(AGENTS, r, episode_id=f"e{i}") for i, r in enumerate([[1.0, 2.0], [0.0, 0.0], [1.0, 0.0]])]
    batch = build_batch(eps, AGENTS)  # order: e0 h0 m0 h1 m1, e1 ..., e2 ...
    # V(h_0), V(h_1) per episode (the same for both agents: one joint critic)
    v = {0: (0.5, 1.0), 1: (0.0, 0.5), 2: (1.0, 0.0)}
    values = torch.tensor([v[e][t] for e in range(3) for t in range(2) for _ in AGENTS])
    adv, y = get_algorithm("cc").train_advantages(batch, values, TrainConfig(algo="cc"))
    # y: e0 1 + .9*1.0 = 1.9, 2 (last turn: y = r) ; e1 0 + .9*.5 = .45, 0 ; e2 1 + .9*0 = 1, 0
    assert y.tolist() == approx([1.9, 1.9, 2, 2, .45, .45, 0, 0, 1, 1, 0, 0])
    # raw A = y - V: turn 0 (1.4, .45, 0), turn 1 (1.0, -.5, 0)
    # turn 0: mean .61667, pop std sqrt(((.78333)^2 + (-.16667)^2 + (-.61667)^2) / 3) = .58357
    #   -> (1.3423, -.2856, -1.0567); turn 1: mean .16667, std .62361 -> (1.3363, -1.0690, -.2673)
    t0, t1 = [1.3423, -0.2856, -1.0567], [1.3363, -1.0690, -0.2673]
    assert adv.tolist() == approx([x for e in range(3) for x in (t0[e], t0[e], t1[e], t1[e])])


def test_singleton_groups_pass_through():
    """One episode: every (agent, turn) group has one sample, so A = y - V unchanged (not 0)."""
    batch = build_batch([chain_episode(AGENTS, [1.0, 0.0, 2.0])], AGENTS)
    values = torch.tensor([0.5, 0.5, 1.0, 1.0, 1.5, 1.5])
    adv, _ = get_algorithm("cc").train_advantages(batch, values, TrainConfig(algo="cc"))
    # y0 = 1 + .9*1 = 1.9, y1 = 0 + .9*1.5 = 1.35, y2 = 2 -> A = 1.4, .35, .5
    assert adv.tolist() == approx([1.4, 1.4, 0.35, 0.35, 0.5, 0.5])
    # direct: singleton kept, equal values -> 0 (std clamped at 1e-6, not a division by 0)
    out = normalize_by_group(torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0]), ["x", "x", "y", "y", "z"])
    assert out.tolist() == approx([-1.0, 1.0, 0.0, 0.0, 5.0])


def test_dc_value_clipping_by_hand():
    # V_old 1.0, y 2.0: V = 1.5 inside the clip (V_clip = 1.2): max(.25, .64) = .64
    # V = 0.5 moves down: V_clip = 0.8: max(2.25, 1.44) = 2.25 ; V = 1.1: V_clip = 1.1 -> .81
    v = torch.tensor([1.5, 0.5, 1.1])
    loss = clipped_value_loss(v, torch.ones(3), torch.full((3,), 2.0), 0.2)
    assert loss.tolist() == approx([0.64, 2.25, 0.81])


# ----------------------------------------------------------------------------- Monte Carlo
def _k_episode(rewards: list[float], episode_id: str = "k") -> EpisodeRecord:
    """One turn, K = len(rewards) aligned joint actions at the root."""
    turns = [
        TurnRecord(turn_index=0, actions=[action(a, [1, 2 + i], [5 + j, 6]) for i, a in enumerate(AGENTS)],
                   reward=r, feedback={}, done=True, branch_index=j, parent_turn_id=None, turn_id=j + 1)
        for j, r in enumerate(rewards)
    ]
    return EpisodeRecord(episode_id=episode_id, task="t", split="train", problem_id="p", seed=0,
                         agents=AGENTS, group_size=len(rewards), status=EPISODE_OK, turns=turns)


@pytest.mark.parametrize(
    "algo, raw",
    [
        ("mareinforce", [0.0, 1.0, 5.0]),  # R itself
        ("magrpo", [-2.0, -1.0, 3.0]),  # R - mean (mean 2)
        ("marloo", [-3.0, -1.5, 4.5]),  # (K R - sum) / (K - 1) = (3R - 6) / 2
        ("maremax", [-5.0, -4.0, 0.0]),  # R - max (max 5)
    ],
)
def test_mc_baselines_k3_raw_and_paper_default(algo, raw):
    batch = build_batch([_k_episode([0.0, 1.0, 5.0])], AGENTS)  # samples: (h, m) per branch
    off, ret = get_algorithm(algo).train_advantages(batch, None, TrainConfig(algo=algo, normalize_adv="off"))
    assert ret.tolist() == approx([0, 0, 1, 1, 5, 5])
    assert off.tolist() == approx([x for x in raw for _ in AGENTS])
    # paper default: standardised within the group; every baseline is affine in R there, so all
    # four give (R - 2) / pop std, std = sqrt((4 + 1 + 9) / 3) = 2.16025
    paper, _ = get_algorithm(algo).train_advantages(batch, None, TrainConfig(algo=algo))
    z = [-2 / 2.16025, -1 / 2.16025, 3 / 2.16025]
    assert paper.tolist() == approx([x for x in z for _ in AGENTS])


def test_mc_tree_paper_default_standardises_each_group():
    """Depth-2 tree (conftest): R a = 1.9, b = 1.8; leaves 0, 2 | 1, 3 -> every K=2 group is +-1."""
    batch = build_batch([tree_episode()], AGENTS)
    adv, ret = get_algorithm("magrpo").train_advantages(batch, None, TrainConfig(algo="magrpo"))
    by_ret = {round(r, 4): a for r, a in zip(ret.tolist(), adv.tolist())}
    assert by_ret == approx({1.9: 1.0, 1.8: -1.0, 0.0: -1.0, 2.0: 1.0, 1.0: -1.0, 3.0: 1.0})


def test_group_baselines_refuse_k1_without_a_model():
    assert set(GROUP_BASELINE_ALGOS) == {"magrpo", "marloo", "maremax"} and set(GROUP_BASELINE_ALGOS) <= set(ALGORITHMS)
    chains = build_batch([chain_episode(AGENTS, [1.0, 0.0])], AGENTS)
    for algo in GROUP_BASELINE_ALGOS:
        with pytest.raises(GroupSizeError, match=r"group_size >= 2.*group_size: 4"):
            check_group_sizes(algo, chains.groups)
        with pytest.raises(GroupSizeError, match="the team has group_size 1"):
            check_team_group_size(algo, 1)
        check_group_sizes(algo, build_batch([tree_episode()], AGENTS).groups)  # K = 2: fine
        check_team_group_size(algo, 2)
    for algo in ("mareinforce", "cc", "dc"):  # no group baseline: K = 1 is meaningful
        check_group_sizes(algo, chains.groups)
        check_team_group_size(algo, 1)


def test_trainer_refuses_k1_for_group_baselines():
    trainer = Trainer(TrainConfig(algo="marloo"), tiny_llama(), AGENTS)
    with pytest.raises(GroupSizeError, match="group_size"):
        trainer.update([chain_episode(AGENTS, [1.0])])
    assert trainer.step == 0


# ----------------------------------------------------------------------------- early termination
def test_episodes_that_end_early():
    """A task's early termination leaves a shorter chain (2 of 4 turns) or a node without children."""
    full = chain_episode(AGENTS, [0.0, 0.0, 0.0, 1.0], episode_id="full")
    short = chain_episode(AGENTS, [0.5, 1.0], episode_id="short")  # stopped after turn 1
    batch = build_batch([full, short], AGENTS)
    values = torch.full((len(batch),), 0.5)
    _, y = get_algorithm("cc").advantages(batch, values, TrainConfig(algo="cc"))
    # full: y = .45, .45, .45, 1 (last: no bootstrap) ; short: y0 = .5 + .9*.5 = .95, y1 = 1.0
    assert y.tolist() == approx([0.45] * 6 + [1.0] * 2 + [0.95] * 2 + [1.0] * 2)
    _, ret = get_algorithm("mareinforce").advantages(batch, None, TrainConfig(algo="mareinforce"))
    # short: R1 = 1, R0 = .5 + .9 = 1.4 ; full: R3 = 1, R2 = .9, R1 = .81, R0 = .729
    assert ret.tolist() == approx([0.729] * 2 + [0.81] * 2 + [0.9] * 2 + [1.0] * 2 + [1.4] * 2 + [1.0] * 2)
    assert batch.episode_returns == approx([1.0, 1.5])
    # tree: branch b stopped at turn 0 (no children): R_b = r_b = 0, R_a = 1 + .9*mean(0, 2) = 1.9
    tree = tree_episode()
    tree.turns = [t for t in tree.turns if t.info["name"] not in ("b1", "b2")]
    tb = build_batch([tree], AGENTS)
    adv, ret = get_algorithm("magrpo").train_advantages(tb, None, TrainConfig(algo="magrpo", normalize_adv="off"))
    got = {(s.turn_index, s.branch_index): (r, a) for s, r, a in zip(tb.samples, ret.tolist(), adv.tolist())}
    assert got == {(0, 0): approx((1.9, 0.95)), (0, 1): approx((0.0, -0.95)),
                   (1, 0): approx((0.0, -1.0)), (1, 1): approx((2.0, 1.0))}


# ----------------------------------------------------------------------------- actor losses
def test_policy_loss_ratio_only_where_stale():
    logp = torch.tensor([-2.0, -3.0, -2.0, -1.0], requires_grad=True)
    logp_old = torch.tensor([-2.0, -3.0, -2.0 - math.log(0.5), -1.0 - math.log(3.0)])  # rho 1, 1, .5, 3
    adv = torch.tensor([1.0, -2.0, 1.0, 2.0])
    stale = torch.tensor([False, False, True, True])
    loss, ratio, clipped = policy_loss(logp, logp_old, adv, stale, clip_eps=None, truncated_is=1.0)
    # fresh: -A log pi = 2, -6 ; stale: -min(rho, 1) A log pi = -.5*1*(-2) = 1, -1*2*(-1) = 2
    assert loss.tolist() == approx([2.0, -6.0, 1.0, 2.0])
    assert clipped.tolist() == [False, False, False, True]  # only the stale rho = 3 is truncated
    loss.sum().backward()
    assert logp.grad.tolist() == approx([-1.0, 2.0, -0.5, -2.0])  # -A, -A, -rho_bar A (rho detached)
    # no ratio loss configured: -A log pi everywhere, stale or not
    plain, _, _ = policy_loss(logp.detach(), logp_old, adv, stale)
    assert plain.tolist() == approx([2.0, -6.0, 2.0, 2.0])


def _capture_grads(trainer: Trainer) -> dict[str, list]:
    """Replace every optimizer's step with a recorder of the gradients it would apply."""
    got: dict[str, list] = {}
    opts = {**{f"actor/{a}": o for a, o in trainer.actor_opts.items()},
            **{f"critic/{n}": o for n, o in trainer.critic_opts.items()}}
    for name, opt in opts.items():
        def step(*_a, _opt=opt, _name=name, **_k):
            got[_name] = [None if p.grad is None else p.grad.detach().clone()
                          for g in _opt.param_groups for p in g["params"]]
        opt.step = step
    return got


def _versioned(ep: EpisodeRecord, versions: dict[str, int]) -> EpisodeRecord:
    for t in ep.turns:
        for a in t.actions:
            a.adapter_version = versions[a.agent]
    return ep


def test_each_agents_actor_loss_is_its_own_mean():
    """helper has 1 trainable sample in both runs, main 1 vs 3: helper's gradient must not change
    (dividing by the whole minibatch, as before issue 12, would halve it in the second run)."""
    cfg = TrainConfig(algo="mareinforce", normalize_adv="off", max_staleness=0, minibatch_size=64)
    base = _versioned(chain_episode(AGENTS, [1.0], episode_id="e0"), {"helper": 1, "main": 1})
    extra = [_versioned(chain_episode(AGENTS, [0.5 + i], episode_id=f"x{i}"), {"helper": 0, "main": 1})
             for i in range(2)]  # helper's actions here are 1 version stale: dropped (max_staleness 0)
    grads = []
    for eps in ([base], [base, *extra]):
        trainer = Trainer(cfg, tiny_llama(), AGENTS)
        trainer.version = 1
        got = _capture_grads(trainer)
        m = trainer.update(eps)
        grads.append(got)
    assert m["charts/samples"] == 4  # helper 1 + main 3
    one, mixed = grads[0]["actor/helper"], grads[1]["actor/helper"]
    assert any(g is not None and g.abs().sum() > 0 for g in one)
    for g1, g2 in zip(one, mixed):
        assert (g1 is None and g2 is None) or torch.allclose(g1, g2, atol=1e-7)


@pytest.mark.parametrize("algo", ["cc", "dc"])
def test_critic_loss_is_coef_times_each_critics_mean(algo):
    """d/db of c_v * mean_i (y_i - V_i)^2 for the head's output bias b is c_v * mean_i 2 (V_i - y_i)."""
    eps = [chain_episode(AGENTS, [r], episode_id=f"e{i}") for i, r in enumerate([1.0, 0.0])]  # y = r
    trainer = Trainer(TrainConfig(algo=algo, minibatch_size=64), tiny_llama(), AGENTS)
    batch = build_batch(eps, AGENTS, 0, trainer.config.critic_max_len)
    values = trainer._old_values(batch)
    rewards = batch.tensor("reward")
    got = _capture_grads(trainer)
    trainer.update(eps)
    for name in trainer.models.critics:
        idx = [i for i, s in enumerate(batch.samples) if algo == "cc" or s.agent == name]
        expected = 0.6 * float((2 * (values[idx] - rewards[idx])).mean())
        bias_grad = got[f"critic/{'joint' if algo == 'cc' else name}"][-1]  # last param: output bias
        assert bias_grad.item() == pytest.approx(expected, abs=1e-6)


def test_truncated_is_only_on_stale_actions():
    """Logged log-probs are fake (-1 per token): rho = pi_learner / pi_behaviour ~ e^-9 for a stale
    action, so its truncated loss is ~0; a fresh action gets the full -A log pi."""
    cfg = TrainConfig(algo="mareinforce", normalize_adv="off", minibatch_size=64)
    fresh = _versioned(chain_episode(AGENTS, [1.0], episode_id="fresh"), {"helper": 1, "main": 1})
    stale = _versioned(chain_episode(AGENTS, [2.0], episode_id="stale"), {"helper": 0, "main": 0})
    trainer = Trainer(cfg, tiny_llama(), AGENTS)
    trainer.version = 1
    batch = build_batch([fresh, stale], AGENTS, 1)
    logp, _ = trainer._score_batch(batch)
    behaviour = batch.tensor("logp_behaviour")
    rho = torch.exp(logp - behaviour).clamp(max=1.0)
    assert float(rho[2:].max()) < 1e-3
    # A = R: 1 for the fresh actions, 2 for the stale ones
    expected = float((-1.0 * logp[:2]).sum() + (-rho[2:] * 2.0 * logp[2:]).sum()) / 4
    m = trainer.update([fresh, stale])
    assert m["charts/stale_frac"] == 0.5
    assert m["losses/actor"] == pytest.approx(expected, rel=1e-4)
    assert m["losses/actor"] == pytest.approx(float(-logp[:2].sum()) / 4, rel=1e-3)  # stale part ~0
