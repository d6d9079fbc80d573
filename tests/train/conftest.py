"""Shared fixtures for collm_train tests: tiny random Llama models built in memory, trace builders."""

from __future__ import annotations

import pytest
import torch

from collm_serve.traces.records import EPISODE_OK, ActionRecord, EpisodeRecord, SamplingRecord, TurnRecord

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def tiny_llama(vocab_size: int = 256, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, **{**TINY, **overrides})
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """Tiny matmuls: intra-op threads only add sync cost, badly so on a shared 2-core box.

    A Trainer sets config.num_threads when it starts (default: every available core); here
    "available" is made 1 core, so tests keep one thread unless they set `threads`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr("collm_train.config.available_cores", lambda: 1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model():
    return tiny_llama()


def action(agent, prompt, response, logprobs=None, version=0, **sampling) -> ActionRecord:
    """An action sampled at temperature 1 without top-k / top-p unless `sampling` says otherwise
    (the fixture states it: the trainer never assumes a default)."""
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": max(1, len(response)), **sampling}
    return ActionRecord(
        agent=agent,
        observation=[],
        prompt_token_ids=list(prompt),
        response_text="",
        response_token_ids=list(response),
        logprobs=list(logprobs) if logprobs is not None else [-1.0] * len(response),
        adapter_version=version,
        sampling=SamplingRecord(**params),
    )


def chain_episode(agents, rewards, prompts=None, responses=None, episode_id="e0") -> EpisodeRecord:
    """A linear episode: turn t has reward rewards[t]; prompts[t][agent] / responses[t][agent]."""
    turns = []
    for t, r in enumerate(rewards):
        acts = [
            action(
                a,
                prompts[t][a] if prompts else [1 + t, 2 + i, 3],
                responses[t][a] if responses else [5, 6 + t],
            )
            for i, a in enumerate(agents)
        ]
        turns.append(
            TurnRecord(
                turn_index=t,
                actions=acts,
                reward=r,
                feedback={},
                done=t == len(rewards) - 1,
                turn_id=100 + t,
                parent_turn_id=None if t == 0 else 100 + t - 1,
            )
        )
    return EpisodeRecord(
        episode_id=episode_id, task="t", split="train", problem_id="p", seed=0, agents=list(agents),
        status=EPISODE_OK, turns=turns,
    )


def tree_episode(agents=("helper", "main"), episode_id="tree") -> EpisodeRecord:
    """Depth 2, K=2: root joint actions a (r=1), b (r=0); children a1 0, a2 2, b1 1, b2 3.

    Turns are stored out of order on purpose (the builder must follow the links, not the list).
    """
    spec = [  # name, turn_id, parent, turn_index, branch, reward
        ("b2", 6, 2, 1, 1, 3.0),
        ("a", 1, None, 0, 0, 1.0),
        ("a1", 3, 1, 1, 0, 0.0),
        ("b", 2, None, 0, 1, 0.0),
        ("a2", 4, 1, 1, 1, 2.0),
        ("b1", 5, 2, 1, 0, 1.0),
    ]
    prompt_of = {1: [7, 8], 2: [7, 8], 3: [7, 8, 20], 4: [7, 8, 20], 5: [7, 8, 30], 6: [7, 8, 30]}
    turns = []
    for name, tid, parent, t, k, r in spec:
        acts = [
            action(a, [i + 1] + prompt_of[tid], [40 + tid, 50 + k + i]) for i, a in enumerate(agents)
        ]
        turns.append(
            TurnRecord(
                turn_index=t, actions=acts, reward=r, feedback={}, done=t == 1, branch_index=k,
                parent_turn_id=parent, turn_id=tid, info={"name": name},
            )
        )
    return EpisodeRecord(
        episode_id=episode_id, task="t", split="train", problem_id="p", seed=0, agents=list(agents),
        group_size=2, status=EPISODE_OK, turns=turns,
    )
