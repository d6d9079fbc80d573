"""Targets and advantages on hand-computed numbers (gamma = 0.9)."""

from __future__ import annotations

import pytest
import torch

from collm_train.algorithms import ALGORITHMS, Algorithm, get_algorithm, register
from collm_train.algorithms.spec import CRITIC_ALGOS, SPECS
from collm_train.config import TrainConfig
from collm_train.data import build_batch
from collm_train.returns import (
    explained_variance,
    gae_advantages,
    normalize_by_group,
    td0_targets,
    tree_returns,
)
from tests.train.conftest import chain_episode, tree_episode

AGENTS = ["helper", "main"]
approx = lambda xs: pytest.approx(xs, abs=1e-6)  # noqa: E731


def test_registry_classes_are_the_spec_table():
    """spec.SPECS is the one definition: every entry has a class, each class carries its entry's
    traits, and a class whose name the table lacks is refused at registration."""
    assert set(ALGORITHMS) == set(SPECS)
    for name, entry in SPECS.items():
        assert ALGORITHMS[name].spec is entry and get_algorithm(name).critic == entry.critic
    assert set(CRITIC_ALGOS) == {"cc", "dc"}
    assert (ALGORITHMS["cc"].critic, ALGORITHMS["dc"].critic, ALGORITHMS["magrpo"].critic) == ("joint", "own", None)
    with pytest.raises(ValueError, match="unknown algorithm"):
        get_algorithm("ppo")
    with pytest.raises(ValueError, match="no entry in .*spec.py"):
        register(type("PPO", (Algorithm,), {"name": "ppo"}))
    assert "ppo" not in ALGORITHMS


def _chain_batch():
    # rewards 1, 0, 2 over three turns; samples ordered (turn, agent): h0 m0 h1 m1 h2 m2
    return build_batch([chain_episode(AGENTS, [1.0, 0.0, 2.0])], AGENTS)


def test_td0_cc_three_turns():
    batch = _chain_batch()
    assert [(s.turn_index, s.agent) for s in batch.samples] == [(t, a) for t in range(3) for a in AGENTS]
    # CC: one V(h_t) per turn, the same for both agents
    values = torch.tensor([0.5, 0.5, 1.0, 1.0, 1.5, 1.5])
    adv, y = get_algorithm("cc").advantages(batch, values, TrainConfig(algo="cc", gamma=0.9))
    # y0 = 1 + .9*1.0 = 1.9, y1 = 0 + .9*1.5 = 1.35, y2 = 2 (terminal: no bootstrap)
    assert y.tolist() == approx([1.9, 1.9, 1.35, 1.35, 2.0, 2.0])
    assert adv.tolist() == approx([1.4, 1.4, 0.35, 0.35, 0.5, 0.5])


def test_td0_dc_three_turns():
    batch = _chain_batch()
    # DC: helper V = 0.2, 0.4, 0.6; main V = 1.0, 0.0, -1.0 (each bootstraps from its own critic)
    values = torch.tensor([0.2, 1.0, 0.4, 0.0, 0.6, -1.0])
    adv, y = get_algorithm("dc").advantages(batch, values, TrainConfig(algo="dc", gamma=0.9))
    # helper: y = 1+.9*.4 = 1.36, 0+.9*.6 = .54, 2 ; main: y = 1+.9*0 = 1, 0+.9*(-1) = -.9, 2
    assert y.tolist() == approx([1.36, 1.0, 0.54, -0.9, 2.0, 2.0])
    assert adv.tolist() == approx([1.16, 0.0, 0.14, -0.9, 1.4, 3.0])


def test_gae_lambda_0_1_and_half():
    batch = _chain_batch()
    r = batch.tensor("reward")
    values = torch.tensor([0.2, 1.0, 0.4, 0.0, 0.6, -1.0])
    _, td_adv = td0_targets(r, values, batch.children, 0.9)
    y0, a0 = gae_advantages(r, values, batch.children, 0.9, 0.0)
    assert a0.tolist() == approx(td_adv.tolist())  # lambda = 0 is TD(0)
    _, a1 = gae_advantages(r, values, batch.children, 0.9, 1.0)
    # lambda = 1: discounted return - V; returns G = 1 + .81*2 = 2.62, .9*2 = 1.8, 2
    assert a1.tolist() == approx([2.62 - 0.2, 2.62 - 1.0, 1.8 - 0.4, 1.8 - 0.0, 2 - 0.6, 2 + 1.0])
    _, ah = gae_advantages(r, values, batch.children, 0.9, 0.5)
    # helper: A2 = 1.4, A1 = .14 + .45*1.4 = .77, A0 = 1.16 + .45*.77 = 1.5065
    assert [ah[4].item(), ah[2].item(), ah[0].item()] == approx([1.4, 0.77, 1.5065])
    # through the algorithm class and config
    adv, y = get_algorithm("dc").advantages(batch, values, TrainConfig(algo="dc", gae_lambda=1.0))
    assert adv.tolist() == approx(a1.tolist()) and y.tolist() == approx((a1 + values).tolist())


def _tree():
    batch = build_batch([tree_episode()], AGENTS)
    name = {}  # (turn, branch, first response token) -> helper's sample index
    for i, s in enumerate(batch.samples):
        if s.agent == "helper":
            name[(s.turn_index, s.branch_index, s.response_ids[0])] = i
    node = {
        "a": name[(0, 0, 41)], "b": name[(0, 1, 42)],
        "a1": name[(1, 0, 43)], "a2": name[(1, 1, 44)], "b1": name[(1, 0, 45)], "b2": name[(1, 1, 46)],
    }
    return batch, node


def test_tree_structure():
    batch, n = _tree()
    assert len(batch) == 12
    assert batch.samples[n["a"]].children == [n["a1"], n["a2"]]
    assert batch.samples[n["b"]].children == [n["b1"], n["b2"]]
    groups = {tuple(sorted(g)) for g in batch.groups if batch.samples[g[0]].agent == "helper"}
    assert groups == {tuple(sorted(x)) for x in ([n["a"], n["b"]], [n["a1"], n["a2"]], [n["b1"], n["b2"]])}
    # undiscounted, averaged over branches: mean(1 + mean(0, 2), 0 + mean(1, 3)) = 2
    assert batch.episode_returns == approx([2.0])


@pytest.mark.parametrize(
    "algo, expected",
    [
        # R: a = 1 + .9*mean(0, 2) = 1.9, b = 0 + .9*mean(1, 3) = 1.8; leaves = rewards
        ("mareinforce", dict(a=1.9, b=1.8, a1=0, a2=2, b1=1, b2=3)),
        ("magrpo", dict(a=0.05, b=-0.05, a1=-1, a2=1, b1=-1, b2=1)),
        ("marloo", dict(a=0.1, b=-0.1, a1=-2, a2=2, b1=-2, b2=2)),
        ("maremax", dict(a=0.0, b=-0.1, a1=-2, a2=0, b1=-2, b2=0)),
    ],
)
def test_monte_carlo_advantages(algo, expected):
    """The raw baselines (normalize_adv off); the paper's default standardisation: test_update_rules."""
    batch, n = _tree()
    adv, ret = get_algorithm(algo).train_advantages(batch, None, TrainConfig(algo=algo, gamma=0.9, normalize_adv="off"))
    assert {k: adv[i].item() for k, i in n.items()} == approx(expected)
    assert {k: ret[i].item() for k, i in n.items()} == approx(dict(a=1.9, b=1.8, a1=0, a2=2, b1=1, b2=3))
    # the other agent gets the same (joint reward, aligned joint actions)
    main = [i for i, s in enumerate(batch.samples) if s.agent == "main"]
    helper = [i for i, s in enumerate(batch.samples) if s.agent == "helper"]
    assert adv[main].tolist() == approx(adv[helper].tolist())


def test_tree_returns_direct():
    # 0 -> {1, 2}; 1, 2 leaves
    ret = tree_returns(torch.tensor([1.0, 2.0, 4.0]), [[1, 2], [], []], 0.5)
    assert ret.tolist() == approx([1 + 0.5 * 3.0, 2.0, 4.0])


def test_td_targets_on_tree_average_children():
    batch, n = _tree()
    values = torch.zeros(len(batch))
    values[n["a1"]], values[n["a2"]] = 1.0, 3.0
    adv, y = get_algorithm("cc").advantages(batch, values, TrainConfig(algo="cc", gamma=0.9))
    assert y[n["a"]].item() == pytest.approx(1 + 0.9 * 2.0)


def test_normalize_by_group_and_explained_variance():
    adv = torch.tensor([1.0, 3.0, 10.0, 10.0, 5.0])
    out = normalize_by_group(adv, ["x", "x", "y", "y", "z"])
    # the singleton z passes through (CoMLRL's `numel() > 1`); before issue 12 it became 0
    assert out.tolist() == approx([-1.0, 1.0, 0.0, 0.0, 5.0])
    assert explained_variance(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == pytest.approx(1.0)
    # y - pred = (-2, 2): 1 - 4 / 1 = -3
    assert explained_variance(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 3.0])) == pytest.approx(-3.0)
