"""From trace records to training samples: one `ActionSample` per (agent, turn row).

A turn row is one joint action at a tree node (records.py). For each trained agent it becomes a
sample holding: the prompt / response token ids exactly as served (no re-tokenisation), the
behaviour log-prob of the macro action (sum of the logged token log-probs), the sampling
parameters that produced it, its adapter version (staleness = learner version - that version),
the joint reward, the critic inputs h_t (joint and own) and the links of the tree: `children`
(the same agent's samples at the node this joint action led to: h_{t+1}) and `group` (its
Monte Carlo siblings: same parent node, same turn).

Joint history h_t (CC critic): the agents' logged prompt_token_ids at that turn concatenated in
team order (`EpisodeRecord.agents`). Each prompt already carries that agent's own system
prompt / role and its own history, so the segments are tagged by construction, and using the
served ids avoids re-tokenisation drift. When it exceeds the critic's max length every agent
keeps the most recent tokens of its own prompt within a fair share of the budget (short
prompts are kept whole, the rest is split), so no agent's view disappears from the critic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from collm_serve.traces.records import EPISODE_OK, EpisodeRecord, TurnRecord


@dataclass
class ActionSample:
    episode_id: str
    agent: str
    turn_index: int
    branch_index: int
    prompt_ids: list[int]  # h_{i,t} as served: the agent's own history
    response_ids: list[int]  # the macro action a_{i,t}, closing end-of-turn token included
    logp_behaviour: float  # sum of logged token log-probs (sampling distribution)
    temperature: float
    top_k: int
    top_p: float
    adapter_version: int
    staleness: int  # learner version - adapter_version
    reward: float  # joint reward r_t of the turn row
    done: bool
    joint_ids: list[int]  # h_t for the CC critic (see module docstring)
    next_joint_ids: list[int] | None  # h_{t+1} (None at a terminal turn)
    next_own_ids: list[int] | None  # h_{i,t+1}
    children: list[int] = field(default_factory=list)  # sample indices at the next node
    group: int = -1  # index into Batch.groups
    trainable: bool = True  # False: too stale; still feeds returns of its ancestors

    @property
    def own_ids(self) -> list[int]:
        return self.prompt_ids


@dataclass
class Batch:
    samples: list[ActionSample]
    groups: list[list[int]]  # Monte Carlo sibling groups (sample indices)
    agents: list[str]  # trained agents
    n_episodes: int
    n_skipped: int  # episodes not used (status != ok, or empty)
    episode_returns: list[float]  # per episode: tree-averaged undiscounted return of the root

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def children(self) -> list[list[int]]:
        return [s.children for s in self.samples]

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N,) tensor of a scalar sample field, e.g. batch.tensor('reward')."""
        return torch.tensor([getattr(s, name) for s in self.samples], dtype=dtype)


def joint_history_ids(prompts: Sequence[Sequence[int]], max_len: int | None = None) -> list[int]:
    """Concatenate the agents' prompts (team order), each left-truncated to a fair share of max_len."""
    if max_len is None or sum(len(p) for p in prompts) <= max_len:
        return [t for p in prompts for t in p]
    keep = [0] * len(prompts)
    remaining, open_ = max_len, sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    while open_:  # water-filling: short prompts whole, the rest share what is left
        share = remaining // len(open_)
        i = open_[0]
        if len(prompts[i]) <= share:
            keep[i] = len(prompts[i])
            remaining -= keep[i]
            open_.pop(0)
            continue
        extra = remaining - share * len(open_)
        for j, i in enumerate(open_):  # the last agents (most recent prompts) get the remainder
            keep[i] = share + (1 if j >= len(open_) - extra else 0)
        break
    return [t for p, k in zip(prompts, keep) for t in (list(p)[len(p) - k :] if k else [])]


def _turn_ids(episode: EpisodeRecord) -> tuple[list[int], list[int | None]]:
    """(turn ids, parent ids). Unsaved chains (turn_id None) get ids from their turn order."""
    if all(t.turn_id is not None for t in episode.turns):
        depth = {t.turn_id: t.turn_index for t in episode.turns}
        for t in episode.turns:  # the store enforces this; in-memory records may not
            want = 0 if t.parent_turn_id is None else depth.get(t.parent_turn_id, -2) + 1
            if t.turn_index != want:
                raise ValueError(
                    f"episode {episode.episode_id}: turn {t.turn_id} has turn_index {t.turn_index} but "
                    f"parent {t.parent_turn_id} implies {want}; link each turn to the turn before it"
                )
        return [t.turn_id for t in episode.turns], [t.parent_turn_id for t in episode.turns]  # type: ignore[misc]
    idx = sorted(range(len(episode.turns)), key=lambda i: episode.turns[i].turn_index)
    if [episode.turns[i].turn_index for i in idx] != list(range(len(idx))):
        raise ValueError(
            f"episode {episode.episode_id}: turns without turn_id must form a chain 0..T-1; "
            "load branching episodes from the trace store so parent_turn_id links exist"
        )
    ids = [0] * len(idx)
    parents: list[int | None] = [None] * len(idx)
    for pos, i in enumerate(idx):
        ids[i] = -(pos + 1)  # negative: cannot collide with store ids
        parents[i] = -pos if pos else None
    return ids, parents


def _sampling(action) -> tuple[float, int, float]:
    s = action.sampling or {}
    temperature = s.get("temperature")
    top_k = s.get("top_k")
    top_p = s.get("top_p")
    return (
        1.0 if temperature is None else float(temperature),
        0 if top_k is None else int(top_k),
        1.0 if top_p is None else float(top_p),
    )


def build_batch(
    episodes: Sequence[EpisodeRecord],
    agents: Sequence[str],
    learner_version: int = 0,
    critic_max_len: int | None = None,
    max_staleness: int | None = None,
) -> Batch:
    """Turn episodes into per-(agent, turn) samples with tree links and MC groups."""
    samples: list[ActionSample] = []
    groups: dict[tuple, list[int]] = {}
    n_skipped = 0
    returns: list[float] = []
    for ep in episodes:
        if ep.status != EPISODE_OK or not ep.turns:
            n_skipped += 1
            continue
        missing = [a for a in agents if a not in ep.agents]
        if missing:
            raise ValueError(f"episode {ep.episode_id} has no agent(s) {missing}; it has {ep.agents}")
        ids, parents = _turn_ids(ep)
        kids: dict[int | None, list[int]] = {}  # parent turn id -> row positions, by branch_index
        for pos, parent in enumerate(parents):
            kids.setdefault(parent, []).append(pos)
        for v in kids.values():
            v.sort(key=lambda pos: ep.turns[pos].branch_index)

        def joint(turn: TurnRecord) -> list[int]:
            return joint_history_ids(
                [turn.action(a).prompt_token_ids for a in ep.agents if any(x.agent == a for x in turn.actions)],
                critic_max_len,
            )

        index: dict[tuple[int, str], int] = {}  # (turn id, agent) -> sample index
        for pos, turn in enumerate(ep.turns):
            child_rows = kids.get(ids[pos], [])
            first_child = ep.turns[child_rows[0]] if child_rows else None
            joint_ids = joint(turn)
            next_joint = joint(first_child) if first_child is not None else None
            for agent in agents:
                a = turn.action(agent)
                temperature, top_k, top_p = _sampling(a)
                staleness = learner_version - a.adapter_version
                key = (ep.episode_id, parents[pos], turn.turn_index, agent)
                groups.setdefault(key, []).append(len(samples))
                index[(ids[pos], agent)] = len(samples)
                samples.append(
                    ActionSample(
                        episode_id=ep.episode_id,
                        agent=agent,
                        turn_index=turn.turn_index,
                        branch_index=turn.branch_index,
                        prompt_ids=list(a.prompt_token_ids),
                        response_ids=list(a.response_token_ids),
                        logp_behaviour=float(sum(a.logprobs)),
                        temperature=temperature,
                        top_k=top_k,
                        top_p=top_p,
                        adapter_version=a.adapter_version,
                        staleness=staleness,
                        reward=float(turn.reward),
                        done=bool(turn.done),
                        joint_ids=joint_ids,
                        next_joint_ids=next_joint,
                        next_own_ids=(
                            list(first_child.action(agent).prompt_token_ids) if first_child else None
                        ),
                        trainable=max_staleness is None or staleness <= max_staleness,
                    )
                )
        for pos in range(len(ep.turns)):
            for agent in agents:
                s = samples[index[(ids[pos], agent)]]
                s.children = [index[(ids[c], agent)] for c in kids.get(ids[pos], [])]
        returns.append(_root_return(ep, ids, kids))
    group_list = list(groups.values())
    for g, members in enumerate(group_list):
        for i in members:
            samples[i].group = g
    return Batch(
        samples=samples,
        groups=group_list,
        agents=list(agents),
        n_episodes=len(episodes) - n_skipped,
        n_skipped=n_skipped,
        episode_returns=returns,
    )


def _root_return(ep: EpisodeRecord, ids: list[int], kids: dict[int | None, list[int]]) -> float:
    """Undiscounted return averaged over branches: mean over root rows of r + mean(children)."""

    def ret(pos: int) -> float:
        ch = kids.get(ids[pos], [])
        return ep.turns[pos].reward + (sum(ret(c) for c in ch) / len(ch) if ch else 0.0)

    roots = kids.get(None, [])
    return sum(ret(p) for p in roots) / len(roots) if roots else 0.0
