"""Trace value objects: episode → turns (joint actions at tree nodes) → one action per agent.

These are the shared contract between the orchestrator (writes), the trace store (persists) and
the trainer (reads). A linear episode is a chain of turns; a branching rollout (group size K)
is a tree: every turn row is ONE joint action taken at a node, `parent_turn_id` links it to the
joint action that led to its node, and the K siblings sharing (parent_turn_id, turn_index) form
the Monte Carlo group. `branch_index` aligns the agents' samples by index inside that group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EPISODE_RUNNING = "running"
EPISODE_OK = "ok"
EPISODE_FAILED = "failed"
EPISODE_STATUSES = (EPISODE_RUNNING, EPISODE_OK, EPISODE_FAILED)


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
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, top_k, seed, ...
    finish_reason: str = ""
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
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
