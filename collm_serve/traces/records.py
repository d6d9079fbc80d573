"""Trace value objects: episode → turns (joint actions at tree nodes) → one action per agent.

These are the shared contract between the orchestrator (writes), the trace store (persists) and
the trainer (reads). A linear episode is a chain of turns; a branching rollout (group size K)
is a tree: every turn row is ONE joint action taken at a node, `parent_turn_id` links it to the
joint action that led to its node, and the K siblings sharing (parent_turn_id, turn_index) form
the Monte Carlo group. `branch_index` aligns the agents' samples by index inside that group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

EPISODE_RUNNING = "running"
EPISODE_OK = "ok"
EPISODE_FAILED = "failed"
EPISODE_STATUSES = (EPISODE_RUNNING, EPISODE_OK, EPISODE_FAILED)


@dataclass(frozen=True)
class SamplingRecord:
    """The sampling an action was ACTUALLY drawn with: the agent service's resolution of the
    request (its configured defaults filled in), echoed in `GenerateResponse.sampling`.

    temperature, top_k, top_p and min_tokens define the per-token distribution the behaviour
    log-probs are taken under (temperature -> top-k -> top-p, collm_serve/sampling.py; EOS masked
    before min_tokens); the trainer recomputes the learner's log-probs under the same values
    (CoMLRL samples and scores with one temperature/top_p, magrpo.py `_generate_completions`).
    max_tokens, seed, n and stop say how the sample was drawn (seed None: the engine drew one).
    """

    temperature: float  # 0 = greedy
    top_p: float  # (0, 1]
    top_k: int  # 0 = off
    max_tokens: int
    min_tokens: int = 0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()

    # what a row of a trace written before this record may carry that is not sampling (the
    # orchestrator used to record its adapter pin here; the served version has its own column)
    LEGACY_KEYS = ("adapter_version", "use_base_model")
    # keys a stored dict must have to be a SamplingRecord (the others default as above: the
    # orchestrator that wrote dicts never asked for min_tokens or stop)
    REQUIRED = ("temperature", "top_p", "top_k", "max_tokens")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"sampling.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("top_k", "max_tokens", "min_tokens", "n") + (("seed",) if self.seed is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"sampling.{name} must be an integer, got {v!r}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(
                f"sampling temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}: "
                "need temperature >= 0, 0 < top_p <= 1, top_k >= 0"
            )
        if self.max_tokens < 1 or self.n < 1 or self.min_tokens < 0:
            raise ValueError(
                f"sampling max_tokens={self.max_tokens}, n={self.n}, min_tokens={self.min_tokens}: "
                "need max_tokens >= 1, n >= 1, min_tokens >= 0"
            )
        if not all(isinstance(x, str) for x in self.stop):
            raise ValueError(f"sampling.stop must be strings, got {self.stop!r}")

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (what the trace store and the exports hold)."""
        return {
            "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "max_tokens": self.max_tokens, "min_tokens": self.min_tokens, "seed": self.seed,
            "n": self.n, "stop": list(self.stop),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SamplingRecord | None:
        """A stored object back to a record; None when it does not say how the action was
        sampled: `{}` (nothing recorded), or a dict of an older trace without all of REQUIRED
        (such rows still load; the trainer refuses them, naming the episode). LEGACY_KEYS are
        dropped; any other unknown key is an error naming it."""
        if not data:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"sampling must be a JSON object, got {data!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known - set(cls.LEGACY_KEYS))
        if unknown:
            raise ValueError(f"sampling has unknown key(s) {unknown}; known: {sorted(known)}")
        if any(data.get(k) is None for k in cls.REQUIRED):
            return None
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ActionRecord:
    """One agent's macro action at one turn: what it saw, what it said, under which policy."""

    agent: str
    observation: list[dict[str, str]]  # chat messages the agent was given (its own history only)
    prompt_token_ids: list[int]
    response_text: str
    response_token_ids: list[int]
    logprobs: list[float]  # behaviour log-prob of each response token (sampling distribution)
    adapter_name: str = ""  # "" = base model
    adapter_version: int = 0  # 0 = base model
    adapter_sha256: str = ""
    sampling: SamplingRecord | None = None  # as the service used it; None = not recorded
    finish_reason: str = ""
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.sampling is not None and not isinstance(self.sampling, SamplingRecord):
            raise TypeError(
                f"action of {self.agent!r}: sampling must be a SamplingRecord or None, got "
                f"{type(self.sampling).__name__} (SamplingRecord.from_json converts a dict)"
            )
        if len(self.logprobs) != len(self.response_token_ids):
            raise ValueError(
                f"action of {self.agent!r}: {len(self.logprobs)} logprobs for "
                f"{len(self.response_token_ids)} response tokens; they must be equal"
            )


@dataclass
class TurnRecord:
    """One joint action at one node: every agent's action, the joint reward and the feedback."""

    turn_index: int  # depth in the episode, 0-based
    actions: list[ActionRecord]
    reward: float
    feedback: dict[str, str]  # per agent: the feedback it gets for its next turn
    done: bool
    branch_index: int = 0  # index of this joint action among its siblings (group of size K)
    parent_turn_id: int | None = None  # turn row that led to this node; None at the root
    info: dict[str, Any] = field(default_factory=dict)  # task diagnostics (levels, test results)
    turn_id: int | None = None  # assigned by the store

    def action(self, agent: str) -> ActionRecord:
        for a in self.actions:
            if a.agent == agent:
                return a
        raise KeyError(f"turn {self.turn_index} has no action of agent {agent!r}")


@dataclass
class EpisodeRecord:
    """A whole episode (a chain, or a tree when group_size > 1) and its outcome."""

    episode_id: str
    task: str
    split: str
    problem_id: str
    seed: int
    agents: list[str]
    group_size: int = 1
    protocol: str = ""
    status: str = EPISODE_RUNNING
    failure_reason: str = ""
    final_return: float | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    turns: list[TurnRecord] = field(default_factory=list)

    def children(self, turn_id: int | None) -> list[TurnRecord]:
        """Joint actions taken at the node reached by `turn_id` (None = the root node)."""
        return sorted(
            (t for t in self.turns if t.parent_turn_id == turn_id), key=lambda t: t.branch_index
        )
