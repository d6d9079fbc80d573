"""What the episode runner reports while it plays: started, each agent action, each stored turn,
finished. `StreamEpisode` turns them into protobuf events; the collector only needs the last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collm_serve.client import AdapterRef
from collm_serve.traces.records import TurnRecord


@dataclass(frozen=True)
class EpisodeStarted:
    episode_id: str
    task: str
    split: str
    problem_id: str
    seed: int
    group_size: int
    num_turns: int
    agents: tuple[str, ...]


@dataclass(frozen=True)
class AgentActed:
    """One sampled response of one agent at one node (branch_index = its choice index)."""

    episode_id: str
    agent: str
    turn_index: int
    branch_index: int
    parent_turn_id: int | None
    text: str
    num_tokens: int
    sum_logprob: float
    finish_reason: str
    adapter: AdapterRef
    latency_ms: float


@dataclass(frozen=True)
class TurnStored:
    """A joint action applied to the task and committed to the trace store."""

    episode_id: str
    turn: TurnRecord


@dataclass
class EpisodeOutcome:
    """The end of an episode, as stored: status "ok" or "failed" (with the reason)."""

    episode_id: str
    task: str
    split: str
    problem_id: str
    seed: int
    group_size: int
    status: str
    final_return: float | None  # mean over root-to-leaf paths of the summed turn rewards
    failure_reason: str = ""
    fix: str = ""  # what the user can do about the failure (AgentCallError.fix), if known
    turns: list[TurnRecord] = field(default_factory=list)  # stored order, turn_id set
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def key(self) -> tuple[str, int]:
        return self.problem_id, self.seed


@dataclass(frozen=True)
class EpisodeFinished:
    outcome: EpisodeOutcome


Event = EpisodeStarted | AgentActed | TurnStored | EpisodeFinished
