"""From trace records to training samples: one `ActionSample` per (agent, turn row).

A turn row is one joint action at a tree node (records.py). For each trained agent it becomes a
sample holding: the prompt / response token ids exactly as served (no re-tokenisation), the
behaviour log-prob of the macro action (sum of the logged token log-probs), the sampling
parameters that produced it (its SamplingRecord, as the service echoed them: `_sampling` refuses
an action without one rather than assume defaults), its adapter version and staleness
(`staleness` below, never < 0),
the joint reward, the critic inputs h_t (joint and own) and the links of the tree: `children`
(the same agent's samples at the node this joint action led to: h_{t+1}) and `group` (its
Monte Carlo siblings: same parent node, same turn).

Joint history h_t (CC critic): the agents' logged prompt_token_ids at that turn concatenated in
team order (`EpisodeRecord.agents`). Each prompt already carries that agent's own system
prompt / role and its own history, so the segments are tagged by construction, and using the
served ids avoids re-tokenisation drift. When it exceeds the critic's max length every agent
gets a fair share of the budget (short prompts are kept whole, the rest is split), so no
agent's view disappears from the critic, and each over-long prompt is cut in the MIDDLE
(`cut_middle`): its task statement (the part shared with the agent's turn-0 prompt: system
prompt + first user message) and its newest turn (what it has beyond its previous turn's
prompt) stay; the oldest turns in between go. The own history h_{i,t} (DC critic) is cut the
same way. Cutting from the left (as before issue 12) loses the task statement first on long
build histories; CoMLRL tokenizes with `truncation=True` at the model's limit
(actor_critic/ac_base.py:69-73), which cuts the END. Actor prompts are never cut here: they are
the served ids, and the agent service refuses prompts over its max_prompt_tokens.

Monte Carlo group size: `check_group_sizes` refuses traces whose sibling groups are smaller
than the algorithm's baseline needs (algorithms/spec.py group_baseline), without torch or a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from collm_serve.traces.records import EPISODE_OK, ActionRecord, EpisodeRecord, SamplingRecord
from collm_train.algorithms.spec import ALGO_NAMES, GROUP_BASELINE_ALGOS

if TYPE_CHECKING:  # torch is imported lazily: the group-size check must run before any heavy import
    import torch


def staleness(learner_version: int, served_version: int) -> int:
    """How many published versions separate the learner's weights from the served ones; >= 0.

    Versions are numbered by one function, collm_serve.adapters.manifest.next_version (the
    trainer publishes with it, trainer.save_adapters), and `learner_version` is the published
    version whose weights the learner holds (0 = the base model). 0 means the same version;
    only such an action can be on-policy (the trainer also needs its weights unchanged since).

    served < learner: the action is that many updates behind the learner (the usual case).
    served > learner: the learner never held those weights, e.g. a fresh trainer starting from
    the base model (version 0) on traces served by v3 of an earlier run, or agents serving
    another learner's versions. This learner did not produce the action, so it is off-policy
    like an old one; its distance is served - learner. Before issue 16 it was reported as a
    negative staleness, which max_staleness never dropped. Either way a stale action gets the
    behaviour log-probs as pi_old and the ratio (TrainConfig.off_policy / ratio_on), and
    max_staleness bounds the distance in both directions.
    """
    return abs(int(learner_version) - int(served_version))


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
    staleness: int  # versions between the learner and adapter_version, >= 0 (`staleness`)
    reward: float  # joint reward r_t of the turn row
    done: bool
    joint_ids: list[int]  # h_t for the CC critic (see module docstring), cut to critic_max_len
    next_joint_ids: list[int] | None  # h_{t+1} (None at a terminal turn)
    next_own_ids: list[int] | None  # h_{i,t+1} as served
    own_ids: list[int] = field(default_factory=list)  # h_{i,t} for the DC critic, cut to critic_max_len
    children: list[int] = field(default_factory=list)  # sample indices at the next node
    group: int = -1  # index into Batch.groups
    trainable: bool = True  # False: too stale; still feeds returns of its ancestors


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

    def tensor(self, name: str, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        """(N,) tensor of a scalar sample field, e.g. batch.tensor('reward') (float32 by default)."""
        import torch

        return torch.tensor([getattr(s, name) for s in self.samples], dtype=dtype or torch.float32)


class UnusableTraceError(ValueError):
    """Traces the trainer cannot learn from as they are; the message names what and the fix
    (`collm-train` prints it as a one-line error before loading a model)."""


class GroupSizeError(UnusableTraceError):
    """Traces (or a team set-up) whose Monte Carlo groups are too small for the algorithm."""


def group_size_message(algo: str, found: str) -> str:
    others = ", ".join(a for a in ALGO_NAMES if a not in GROUP_BASELINE_ALGOS)
    return (
        f"--algo {algo} needs group_size >= 2 (K samples per agent per node): its baseline compares "
        f"each return with its siblings', so a group of one sample gets advantage 0 and nothing is "
        f"learned; {found}. Fix: collect with `group_size: 4` in the team YAML (or `collm-serve "
        f"collect --group-size 4`), or train these traces with an --algo without one ({others})."
    )


def check_team_group_size(algo: str, group_size: int) -> None:
    """Refuse a set-up that will collect K < 2 for a group baseline (CoMLRL: magrpo.py:62-65)."""
    if algo in GROUP_BASELINE_ALGOS and group_size < 2:
        raise GroupSizeError(group_size_message(algo, f"the team has group_size {group_size}"))


def check_group_sizes(algo: str, groups: Sequence[Sequence[int]]) -> None:
    """Refuse traces with a sibling group of one sample for a group baseline (CoMLRL refuses
    num_generations < 2, reinforce/magrpo.py:62-65 and 228-230)."""
    if algo not in GROUP_BASELINE_ALGOS:
        return
    small = [g for g in groups if len(g) < 2]
    if small:
        raise GroupSizeError(group_size_message(
            algo, f"{len(small)} of {len(groups)} sibling groups in these traces have one sample"))


def check_traces(algo: str, episodes: Sequence[EpisodeRecord], agents: Sequence[str]) -> None:
    """check_group_sizes on the episodes' sibling groups: no model, no torch (runs in < 1 s)."""
    check_group_sizes(algo, build_batch(episodes, agents).groups)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cut_middle(ids: Sequence[int], max_len: int | None, head: int = 0, newest: int | None = None) -> list[int]:
    """At most max_len tokens of ids, cut in the middle.

    head: length of the prefix to keep (the task statement); newest: length of the suffix that
    must stay (the newest turn; default all of ids). The newest turn is reserved up to half the
    budget, the head gets what is left of the rest, and the tail (newest turn + the most recent
    older tokens) fills the remaining budget. head=0 is a plain left cut (keep the last max_len).
    """
    ids = list(ids)
    if max_len is None or len(ids) <= max_len:
        return ids
    newest = len(ids) if newest is None else min(newest, len(ids))
    keep_head = min(head, max_len - min(newest, max_len // 2))
    keep_tail = max_len - keep_head
    return ids[:keep_head] + ids[len(ids) - keep_tail :]


def joint_history_ids(
    prompts: Sequence[Sequence[int]],
    max_len: int | None = None,
    heads: Sequence[int] | None = None,
    newest: Sequence[int | None] | None = None,
) -> list[int]:
    """Concatenate the agents' prompts (team order), each cut (`cut_middle`, with that agent's
    heads[i] / newest[i]) to a fair share of max_len; without heads, a left cut."""
    heads = list(heads) if heads is not None else [0] * len(prompts)
    newest = list(newest) if newest is not None else [None] * len(prompts)
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
    return [t for i, (p, k) in enumerate(zip(prompts, keep)) for t in cut_middle(p, k, heads[i], newest[i])]


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


def _sampling(episode_id: str, turn_index: int, action: ActionRecord) -> SamplingRecord:
    """The sampling the action was drawn with, as the agent service echoed it and the trace
    recorded it. Never a default: a learner log-prob under a guessed temperature / top-p would
    bias every importance ratio without a trace of it.

    Legacy traces (written before the service echoed its sampling) hold the orchestrator's
    request; the store loads those that name temperature, top_p, top_k and max_tokens as a
    SamplingRecord (the old orchestrator always sent all four, so the service used exactly
    them) and anything less as None, which is refused here with the episode named.
    """
    s = action.sampling
    where = f"episode {episode_id} turn {turn_index}: the action of {action.agent!r}"
    if s is None:
        raise UnusableTraceError(
            f"{where} has no sampling record (a trace written before collm recorded the sampling a "
            "service used, or built by hand), so its behaviour distribution is unknown and the "
            "trainer will not guess it; recollect the episode with `collm-serve collect`, or give "
            "the ActionRecord a SamplingRecord"
        )
    if s.min_tokens:
        raise UnusableTraceError(
            f"{where} was sampled with min_tokens={s.min_tokens} (end-of-sequence masked), which "
            "the learner's log-probs do not model; train on episodes collected without min_tokens"
        )
    return s


def build_batch(
    episodes: Sequence[EpisodeRecord],
    agents: Sequence[str],
    learner_version: int = 0,
    critic_max_len: int | None = None,
    max_staleness: int | None = None,
) -> Batch:
    """Turn episodes into per-(agent, turn) samples with tree links and MC groups.

    learner_version: the published version whose weights the learner holds (Trainer.version);
    each sample's staleness is `staleness(learner_version, its adapter_version)`."""
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

        pos_of = {tid: pos for pos, tid in enumerate(ids)}
        roots = kids.get(None, [])

        def prompt_of(pos: int, agent: str) -> list[int] | None:
            acts = [x for x in ep.turns[pos].actions if x.agent == agent]
            return list(acts[0].prompt_token_ids) if acts else None

        def layout(pos: int, agent: str) -> tuple[int, int]:
            """(task statement length, newest turn length) of agent's prompt at row pos."""
            prompt = prompt_of(pos, agent) or []
            root = prompt_of(roots[0], agent) if roots else None
            head = common_prefix_len(prompt, root) if root is not None else 0
            parent = parents[pos]
            before = prompt_of(pos_of[parent], agent) if parent in pos_of else None
            return head, len(prompt) - (common_prefix_len(prompt, before) if before is not None else 0)

        def joint(pos: int) -> list[int]:
            present = [a for a in ep.agents if prompt_of(pos, a) is not None]
            lay = [layout(pos, a) for a in present]
            return joint_history_ids(
                [prompt_of(pos, a) for a in present], critic_max_len, [h for h, _ in lay], [n for _, n in lay]
            )

        index: dict[tuple[int, str], int] = {}  # (turn id, agent) -> sample index
        for pos, turn in enumerate(ep.turns):
            child_rows = kids.get(ids[pos], [])
            first_child = ep.turns[child_rows[0]] if child_rows else None
            joint_ids = joint(pos)
            next_joint = joint(child_rows[0]) if first_child is not None else None
            for agent in agents:
                a = turn.action(agent)
                sp = _sampling(ep.episode_id, turn.turn_index, a)
                stale_by = staleness(learner_version, a.adapter_version)
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
                        temperature=sp.temperature,
                        top_k=sp.top_k,
                        top_p=sp.top_p,
                        adapter_version=a.adapter_version,
                        staleness=stale_by,
                        reward=float(turn.reward),
                        done=bool(turn.done),
                        joint_ids=joint_ids,
                        next_joint_ids=next_joint,
                        next_own_ids=(
                            list(first_child.action(agent).prompt_token_ids) if first_child else None
                        ),
                        own_ids=cut_middle(a.prompt_token_ids, critic_max_len, *layout(pos, agent)),
                        trainable=max_staleness is None or stale_by <= max_staleness,
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
