"""The episode runner: plays one problem of a task with the team and logs every turn.

Each turn, at each node of the episode:
  1. every agent gets its OWN observation from the task (its history and its feedback only);
  2. one request per agent goes out, all CONCURRENTLY (`asyncio.gather`): agents are separate
     services, so a turn costs about the slower agent, not the sum (bench/parallel_turn.py);
  3. the joint action goes to `TaskEpisode.step` (in a worker thread: the coding task runs a
     sandbox subprocess), which returns the joint reward, per-agent feedback and done;
  4. the turn (joint action + reward + feedback) is committed to the trace store in ONE
     transaction, linked to its parent turn.

Branching rollouts (group size K, the Monte Carlo baselines' tree): each agent samples K
responses at a node with the engine's `n`; joint action k pairs every agent's k-th response
(aligned by index); each joint action continues on its own `clone()` of the node's episode.
The K joint actions at a node are siblings (same parent_turn_id, branch_index 0..K-1). A tree
of depth T has K + K^2 + ... + K^T turns and 1 + K + ... + K^(T-1) requests per agent: with
K=4 the 4-turn build game is 340 turns, with K=8 it would be 4680. `tree_turns()` computes it
and the runner refuses trees above `max_tree_turns` (default MAX_TREE_TURNS) up front, rather
than discover the cost halfway. Nodes of one depth are expanded concurrently.

Early termination (a task's `early_stop_threshold`, tasks/base.py): a node's K joint actions are
stepped without the per-episode test, then all K end together when the mean of their shifted
rewards passes the threshold; their turns are stored with done=True and info.early_stop, and the
branch has no children (its path is shorter than num_turns).

The return of an episode is the mean over its root-to-leaf paths of the summed (undiscounted)
turn rewards; for a chain (K=1) that is the plain sum of its rewards. Trainers recompute
discounted returns from the stored per-turn rewards.

Failure handling: an agent that stays unavailable (after the team's retry policy), a task that
raises, or a cancellation ends the episode as "failed" with the reason; turns already committed
stay (each is whole), the turn in flight is never written. A `drain` event stops the episode at
the next turn boundary (the turns in flight finish and are stored first).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from collm_serve.orchestrator.agents import AdapterPins, AgentCallError, AgentPool, AgentReply
from collm_serve.orchestrator.events import (
    AgentActed,
    EpisodeFinished,
    EpisodeOutcome,
    EpisodeStarted,
    Event,
    TurnStored,
)
from collm_serve.tasks.base import Problem, Task, TaskEpisode, early_stop_reached
from collm_serve.traces.records import (
    EPISODE_FAILED,
    EPISODE_OK,
    ActionRecord,
    EpisodeRecord,
    TurnRecord,
)
from collm_serve.traces.store import TraceStore

MAX_TREE_TURNS = 1024
PROTOCOL = "parallel"  # every agent acts each turn, concurrently, from its own observation
INTERRUPTED = "interrupted"


class TreeTooLargeError(ValueError):
    pass


def tree_turns(group_size: int, num_turns: int) -> int:
    """Turns stored by one episode: K + K^2 + ... + K^T."""
    return sum(group_size**t for t in range(1, num_turns + 1))


def check_tree(group_size: int, num_turns: int, max_tree_turns: int = MAX_TREE_TURNS) -> None:
    n = tree_turns(group_size, num_turns)
    if n > max_tree_turns:
        raise TreeTooLargeError(
            f"group size {group_size} over {num_turns} turns makes {n} turns per episode "
            f"(K + K^2 + ... + K^T), above max_tree_turns={max_tree_turns}; lower the group "
            "size or the turns, or raise max_tree_turns"
        )


def request_seed(episode_seed: int, agent: str, path: tuple[int, ...]) -> int:
    """A per-(episode, agent, node) sampling seed: replays are reproducible and no two agents
    or nodes share a random stream (two agents on one model with one seed would say the same)."""
    key = f"{episode_seed}/{agent}/{'.'.join(map(str, path))}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


async def gather_or_cancel(*aws):
    """`asyncio.gather`, but the first failure cancels the others (their work is moot)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@dataclass
class _Node:
    """A point of the episode tree where the agents act: the task state and how we got here."""

    episode: TaskEpisode
    parent_turn_id: int | None
    turn_index: int
    path: tuple[int, ...]  # branch indices from the root
    return_so_far: float


class EpisodeInterrupted(Exception):
    pass


class EpisodeRunner:
    """Plays episodes of one task with one agent pool into one trace store."""

    def __init__(
        self, task: Task, task_name: str, pool: AgentPool, store: TraceStore, *,
        group_size: int = 1, max_tree_turns: int = MAX_TREE_TURNS, pin_adapters: bool = True,
        metadata: dict | None = None,
    ):
        check_tree(group_size, task.num_turns, max_tree_turns)
        self.task, self.task_name, self.pool, self.store = task, task_name, pool, store
        self.group_size = group_size
        self.max_tree_turns = max_tree_turns
        self.pin_adapters = pin_adapters
        self.metadata = metadata or {}

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(self.task.agents)

    async def run(
        self, problem: Problem, seed: int, *, group_size: int | None = None,
        on_event: Callable[[Event], None] | None = None, drain: asyncio.Event | None = None,
    ) -> EpisodeOutcome:
        """Play `problem` to the end; always returns the stored outcome (ok or failed).

        Cancelling the call stores the episode as failed ("interrupted") and re-raises.
        """
        k = group_size or self.group_size
        check_tree(k, self.task.num_turns, self.max_tree_turns)
        emit = on_event or (lambda e: None)
        started = time.monotonic()
        record = EpisodeRecord(
            episode_id=uuid.uuid4().hex, task=self.task_name, split=problem.split,
            problem_id=problem.problem_id, seed=seed, agents=list(self.agents), group_size=k,
            protocol=PROTOCOL,
            metadata={"num_turns": self.task.num_turns, "pin_adapters": self.pin_adapters,
                      "agents": {a: self.pool.team.agents[a].address for a in self.agents},
                      **self.metadata},
        )
        # Synchronous (one small commit): a cancellation must not land between the insert and
        # the try below, or the row would stay "running" until the next resume.
        self.store.begin_episode(record)
        eid = record.episode_id
        outcome = EpisodeOutcome(eid, self.task_name, problem.split, problem.problem_id, seed, k,
                                 status=EPISODE_FAILED, final_return=None)
        emit(EpisodeStarted(eid, self.task_name, problem.split, problem.problem_id, seed, k,
                            self.task.num_turns, self.agents))
        try:
            leaf_returns = await self._play(problem, seed, k, outcome, emit, drain)
            end = {"status": EPISODE_OK, "final_return": sum(leaf_returns) / len(leaf_returns)}
        except AgentCallError as e:
            end = {"failure_reason": str(e), "fix": e.fix}
        except EpisodeInterrupted as e:
            end = {"failure_reason": str(e)}
        except asyncio.CancelledError as e:
            why = f"{INTERRUPTED} ({e.args[0]})" if e.args and e.args[0] else INTERRUPTED
            outcome = replace(outcome, failure_reason=why, elapsed_s=time.monotonic() - started)
            # Synchronously: the task is being cancelled, and the row must not stay "running".
            self.store.finish_episode(eid, EPISODE_FAILED, None, why)
            emit(EpisodeFinished(outcome))
            raise
        except Exception as e:  # a task that raises (a bug, a broken sandbox): keep collecting
            end = {"failure_reason": f"episode error: {type(e).__name__}: {e}"}
        outcome = replace(outcome, **end, elapsed_s=time.monotonic() - started)
        await asyncio.to_thread(self.store.finish_episode, eid, outcome.status,
                                outcome.final_return, outcome.failure_reason)
        emit(EpisodeFinished(outcome))
        return outcome

    async def _play(self, problem, seed, k, outcome, emit, drain) -> list[float]:
        pins = AdapterPins() if self.pin_adapters else None
        frontier = [_Node(self.task.new_episode(problem), None, 0, (), 0.0)]
        leaf_returns: list[float] = []
        while frontier:
            if drain is not None and drain.is_set():
                raise EpisodeInterrupted(f"{INTERRUPTED} (stopped at turn {frontier[0].turn_index})")
            if frontier[0].turn_index >= self.task.num_turns:
                raise RuntimeError(f"task did not finish after its {self.task.num_turns} turns")
            children = await gather_or_cancel(
                *(self._expand(node, seed, k, pins, outcome, emit) for node in frontier)
            )
            frontier = []
            for node_children in children:
                for child, ret, done in node_children:
                    if done:
                        leaf_returns.append(ret)
                    else:
                        frontier.append(child)
        return leaf_returns

    async def _expand(self, node: _Node, seed: int, k: int, pins: AdapterPins | None,
                      outcome: EpisodeOutcome, emit) -> list[tuple[_Node | None, float, bool]]:
        """One turn at one node: K joint actions, each stepped on its own copy and stored."""
        eid = outcome.episode_id
        observations = {a: node.episode.observation(a) for a in self.agents}
        path = ".".join(map(str, node.path)) or "r"
        replies: list[AgentReply] = await gather_or_cancel(*(
            self.pool.act(a, observations[a], n=k, seed=request_seed(seed, a, node.path), pins=pins,
                          request_id=f"{eid[:16]}.t{node.turn_index}.{path}.{a}")
            for a in self.agents
        ))
        by_agent = dict(zip(self.agents, replies))
        for r in replies:
            if len(r.output.choices) != k:
                raise RuntimeError(f"agent {r.agent} returned {len(r.output.choices)} choices for n={k}")
            for c in r.output.choices:
                emit(AgentActed(eid, r.agent, node.turn_index, c.index, node.parent_turn_id, c.text,
                                len(c.token_ids), float(sum(c.logprobs)), c.finish_reason,
                                r.output.adapter, r.latency_ms))
        # Clone BEFORE stepping: every branch starts from the node's state.
        branches = [node.episode.clone() for _ in range(k - 1)] + [node.episode]
        joint = [{a: by_agent[a].output.choices[b].text for a in self.agents} for b in range(k)]
        results = await gather_or_cancel(
            *(asyncio.to_thread(ep.step, ja, early_stop=False) for ep, ja in zip(branches, joint))
        )
        # Early termination on the node, as the paper's code does: all K joint actions of a node
        # end when the mean of their (shifted) rewards passes the task's threshold
        # (comlrl magrpo.py:853-860; with K = 1 it is the actor-critic rule, maac.py:713-717).
        if not results[0].done and early_stop_reached([r.reward for r in results],
                                                      self.task.early_stop_threshold):
            results = [ep.end_early(r) for ep, r in zip(branches, results)]
        notes = {r.agent: {"attempts": r.attempts, "pin_fallback": r.pin_fallback}
                 for r in replies if r.attempts > 1 or r.pin_fallback}
        out = []
        for b, (ep, result) in enumerate(zip(branches, results)):
            turn = TurnRecord(
                turn_index=node.turn_index,
                actions=[self._action(by_agent[a], b, observations[a]) for a in self.agents],
                reward=float(result.reward), feedback=dict(result.feedback), done=bool(result.done),
                branch_index=b, parent_turn_id=node.parent_turn_id,
                info={**result.info, **({"orchestrator": notes} if notes else {})},
            )
            await asyncio.to_thread(self.store.append_turn, eid, turn)
            outcome.turns.append(turn)
            emit(TurnStored(eid, turn))
            ret = node.return_so_far + turn.reward
            child = None if turn.done else _Node(ep, turn.turn_id, node.turn_index + 1,
                                                 (*node.path, b), ret)
            out.append((child, ret, turn.done))
        return out

    @staticmethod
    def _action(reply: AgentReply, b: int, observation: list[dict[str, str]]) -> ActionRecord:
        out = reply.output
        c = out.choices[b]
        return ActionRecord(
            agent=reply.agent, observation=observation, prompt_token_ids=list(out.prompt_token_ids),
            response_text=c.text, response_token_ids=list(c.token_ids), logprobs=list(c.logprobs),
            adapter_name=out.adapter.name, adapter_version=out.adapter.version,
            adapter_sha256=out.adapter.sha256, sampling=reply.sampling,
            finish_reason=c.finish_reason, latency_ms=reply.latency_ms,
        )
