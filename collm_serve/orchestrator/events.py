"""What the episode runner reports while it plays: started, each agent action, each stored turn,
finished. `StreamEpisode` turns them into protobuf events; the collector only needs the last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collm_serve.client import AdapterRef
from collm_serve.traces.records import TurnRecord


@dataclass(frozen=True)
class EpisodeHead:
    """Which episode: its id, task, problem and seed, and its group size K. The start and the
    end of an episode both carry it; one definition, so the two never disagree on it."""

    episode_id: str
    task: str
    split: str  # "train" or "eval": which of the task's problem sets it was drawn from
    problem_id: str
    seed: int  # the episode's sampling seed; (problem_id, seed) is its key (EpisodeOutcome.key)
    group_size: int  # K: responses sampled per agent at each node of the episode's tree


@dataclass(frozen=True)
class EpisodeStarted(EpisodeHead):
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


@dataclass(frozen=True)
class EpisodeOutcome(EpisodeHead):
    """The end of an episode, as stored: status "ok" or "failed" (with the reason). Frozen like
    every event: the runner appends to `turns` while it plays, then `replace`s the end in."""

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
