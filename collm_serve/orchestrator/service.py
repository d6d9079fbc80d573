"""`OrchestratorService` over gRPC (protos/collm/v1/orchestrator.proto) and its server:
`collm-serve orchestrate --config team.yaml --port 50070`.

The servicer resolves the requested problem, plays it with the EpisodeRunner and answers with
the stored outcome (RunEpisode) or with one event per agent action and per turn (StreamEpisode).
An episode whose agents fail is stored as failed and answered normally (status FAILED with the
reason); only bad requests are RPC errors, mapped in ONE place (`_rpc`, over the ladder of
collm_serve/rpc.py that the agent shares: anything unexpected is logged and answered INTERNAL).
A client that cancels (or whose deadline passes) cancels the episode: it is stored as
failed/"interrupted".
The server carries grpc.health.v1 (NOT_SERVING while draining) and reflection, and drains on
SIGTERM/SIGINT: new episodes get UNAVAILABLE, running ones get `drain_s` to finish.

Its door is the agents' (collm_serve/auth.py): `orchestrator_token` (else the agents'
`auth_token`, so a team with agent auth never runs episodes for anonymous callers),
`orchestrator_tls` for TLS/mTLS with certificate identities; health and reflection stay open.
An episode costs compute and writes traces, so listening on a non-loopback address with no
door is logged as a warning and announced (`"auth": false`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from dataclasses import fields

from collm_serve.errors import InvalidArgument, NotFound, Unavailable
from collm_serve.orchestrator.agents import AgentPool
from collm_serve.orchestrator.collector import open_store
from collm_serve.orchestrator.episode import MAX_TREE_TURNS, EpisodeRunner, TreeTooLargeError, check_tree
from collm_serve.orchestrator.events import (
    AgentActed,
    EpisodeFinished,
    EpisodeHead,
    EpisodeOutcome,
    EpisodeStarted,
    TurnStored,
)
from collm_serve.orchestrator.teams import build_task, find_problem
from collm_serve.proto.collm.v1 import agent_pb2
from collm_serve.proto.collm.v1 import orchestrator_pb2 as pb
from collm_serve.proto.collm.v1 import orchestrator_pb2_grpc
from collm_serve.rpc import BindError, announce, build_grpc_server, outcome, server_credentials, set_health
from collm_serve.tasks.base import SPLITS
from collm_serve.team import TeamConfig
from collm_serve.traces.records import TurnRecord
from collm_serve.traces.store import TraceStore

log = logging.getLogger("collm.orchestrator")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
_STATUS = {"ok": pb.EPISODE_STATUS_OK, "failed": pb.EPISODE_STATUS_FAILED}
# why an episode is cancelled when its RPC ends first (client cancel, deadline, disconnect)
CALLER_LEFT = "client cancelled the call or its deadline passed"

# -- protobuf conversions ---------------------------------------------------------------------


def turn_to_pb(turn: TurnRecord) -> pb.TurnResult:
    msg = pb.TurnResult(turn_id=turn.turn_id or 0, turn_index=turn.turn_index,
                        branch_index=turn.branch_index, reward=turn.reward,
                        feedback=turn.feedback, done=turn.done)
    if turn.parent_turn_id is not None:
        msg.parent_turn_id = turn.parent_turn_id
    return msg


def _head_fields(h: EpisodeHead) -> dict:
    """The `EpisodeHead` fields of an event, named as in its protobuf message (both messages
    carry them under the same names)."""
    return {f.name: getattr(h, f.name) for f in fields(EpisodeHead)}


def outcome_to_pb(o: EpisodeOutcome) -> pb.RunEpisodeResponse:
    msg = pb.RunEpisodeResponse(
        **_head_fields(o), status=_STATUS[o.status], failure_reason=o.failure_reason,
        turns=[turn_to_pb(t) for t in o.turns],
    )
    if o.final_return is not None:
        msg.final_return = o.final_return
    return msg


def event_to_pb(event) -> pb.StreamEpisodeResponse:
    if isinstance(event, EpisodeStarted):
        return pb.StreamEpisodeResponse(started=pb.EpisodeStarted(
            **_head_fields(event), num_turns=event.num_turns, agents=list(event.agents)))
    if isinstance(event, AgentActed):
        action = pb.AgentAction(
            agent=event.agent, turn_index=event.turn_index, branch_index=event.branch_index,
            text=event.text, num_tokens=event.num_tokens, sum_logprob=event.sum_logprob,
            finish_reason=event.finish_reason, latency_ms=event.latency_ms,
            adapter=agent_pb2.AdapterRef(name=event.adapter.name, version=event.adapter.version,
                                         sha256=event.adapter.sha256))
        if event.parent_turn_id is not None:
            action.parent_turn_id = event.parent_turn_id
        return pb.StreamEpisodeResponse(action=action)
    if isinstance(event, TurnStored):
        return pb.StreamEpisodeResponse(turn=turn_to_pb(event.turn))
    if isinstance(event, EpisodeFinished):
        return pb.StreamEpisodeResponse(finished=outcome_to_pb(event.outcome))
    raise TypeError(f"unknown event {event!r}")


# -- servicer -----------------------------------------------------------------------------------


def _log_outcome(task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    o = task.result()
    if not o.ok:
        log.warning("episode %s (%s seed %d) failed: %s", o.episode_id, o.problem_id, o.seed, o.failure_reason)


def _rpc(fn):
    """Run a unary or server-streaming handler inside the shared outcome ladder
    (collm_serve/rpc.py `outcome`): domain errors keep their codes, anything unexpected is logged
    and answered INTERNAL without its internals, and every outcome is counted
    (`collm_orchestrator_rpcs_total{method,code}`)."""
    method = fn.__name__

    def ladder(self, context):
        return outcome(context, method, log, count=lambda code: self.metrics.rpcs.labels(method, code.name).inc())

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            async with ladder(self, context):
                async for item in fn(self, request, context):
                    yield item
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        async with ladder(self, context):
            return await fn(self, request, context)
    return unary


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, team: TeamConfig, pool: AgentPool, store: TraceStore, *,
                 max_tree_turns: int = MAX_TREE_TURNS, max_concurrent_episodes: int = 8):
        self.team = team
        self.task = build_task(team)
        self.runner = EpisodeRunner(self.task, team.task, pool, store, group_size=team.group_size,
                                    max_tree_turns=max_tree_turns)
        self.max_tree_turns = max_tree_turns
        self.draining = False
        self._slots = asyncio.Semaphore(max_concurrent_episodes)
        self._running: set[asyncio.Task] = set()
        from collm_serve.metrics import OrchestratorMetrics

        self.metrics = OrchestratorMetrics()

    def _play(self, context, problem, seed: int, k: int, on_event=None) -> asyncio.Task:
        """The episode as a task of its own, tracked so a shutdown can settle it in the store,
        and tied to the RPC: when the call ends first (client cancel, deadline), the episode is
        cancelled and stored as interrupted. A streaming handler alone cannot guarantee that:
        a cancel that arrives while gRPC writes an event never reaches the generator's code.
        """
        def observe(event) -> None:
            self.metrics.observe(event)
            if on_event is not None:
                on_event(event)

        task = asyncio.create_task(self.runner.run(problem, seed, group_size=k, on_event=observe))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(_log_outcome)

        def rpc_done(ctx) -> None:
            # The handler waits for the episode on every normal path, so an episode still
            # running when the call is over means the caller left. One reason for the callback
            # and the handlers' finally: which of them runs first is a race (ctx.cancelled() was
            # seen False here for a client cancel), and the stored reason must not depend on it.
            if not task.done():
                task.cancel(CALLER_LEFT)

        context.add_done_callback(rpc_done)
        return task

    async def shutdown(self) -> None:
        """Cancel episodes still running (each is stored as failed/"interrupted")."""
        for task in list(self._running):
            task.cancel("orchestrator shut down")
        await asyncio.gather(*self._running, return_exceptions=True)

    def _resolve(self, spec: pb.EpisodeSpec):
        if self.draining:
            raise Unavailable("orchestrator is draining; retry on another instance")
        split = spec.split or "train"
        if split not in SPLITS:
            raise InvalidArgument("episode.split", f"{split!r} is not one of {', '.join(SPLITS)}")
        which = spec.WhichOneof("problem")
        try:
            if which == "problem_id":
                problem = find_problem(self.task, split, problem_id=spec.problem_id)
            elif which == "problem_index":
                problem = find_problem(self.task, split, index=spec.problem_index)
            else:
                raise InvalidArgument("episode.problem", "set problem_id or problem_index")
        except (KeyError, IndexError) as e:
            raise NotFound(str(e.args[0])) from None
        k = spec.group_size or self.team.group_size
        if not 1 <= k <= 16:
            raise InvalidArgument("episode.group_size", f"{k} must be in 1..16 (0 = the team's)")
        try:
            check_tree(k, self.task.num_turns, self.max_tree_turns)
        except TreeTooLargeError as e:
            raise InvalidArgument("episode.group_size", str(e)) from None
        index = self.task.problems(split).index(problem)
        seed = spec.seed if spec.HasField("seed") else self.team.seed + index
        if seed < 0:
            raise InvalidArgument("episode.seed", f"{seed} must be >= 0")
        return problem, seed, k

    @_rpc
    async def RunEpisode(self, request, context):
        problem, seed, k = self._resolve(request.episode)
        async with self._slots:
            play = self._play(context, problem, seed, k)
            try:
                outcome = await play
            finally:  # the client cancelled, or its deadline passed: so is the episode
                if not play.done():
                    play.cancel(CALLER_LEFT)
                    await asyncio.gather(play, return_exceptions=True)
        return outcome_to_pb(outcome)

    @_rpc
    async def StreamEpisode(self, request, context):
        problem, seed, k = self._resolve(request.episode)
        events: asyncio.Queue = asyncio.Queue()
        async with self._slots:
            play = self._play(context, problem, seed, k, events.put_nowait)
            try:
                while not (play.done() and events.empty()):
                    get = asyncio.ensure_future(events.get())
                    await asyncio.wait({get, play}, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        continue
                    yield event_to_pb(get.result())
                await play  # surfaces a runner that died before finishing the episode
            finally:  # the client went away: the episode is cancelled and stored as interrupted
                if not play.done():
                    play.cancel(CALLER_LEFT)
                    await asyncio.gather(play, return_exceptions=True)


# -- server -------------------------------------------------------------------------------------


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class OrchestratorServer:
    """The gRPC server of one team (OrchestratorService + health + reflection)."""

    def __init__(self, team: TeamConfig, *, host: str | None = None, port: int | None = None,
                 traces: str | TraceStore | None = None, max_tree_turns: int = MAX_TREE_TURNS,
                 max_concurrent_episodes: int = 8, metrics_port: int | None = None):
        self.team = team
        self._metrics_port = team.orchestrator_metrics_port if metrics_port is None else metrics_port
        self.metrics_port: int | None = None
        self.address = f"{host or team.orchestrator_host}:{team.orchestrator_port if port is None else port}"
        self._traces = traces if traces is not None else team.traces
        self._max_tree_turns, self._max_episodes = max_tree_turns, max_concurrent_episodes
        self.port: int | None = None
        self.store: TraceStore | None = None

    async def start(self) -> OrchestratorServer:
        self.store = open_store(self._traces)
        self.pool = AgentPool(self.team)
        self.servicer = OrchestratorServicer(self.team, self.pool, self.store,
                                             max_tree_turns=self._max_tree_turns,
                                             max_concurrent_episodes=self._max_episodes)
        self.auth = self.team.orchestrator_auth
        self.server, self.port, self._health = build_grpc_server(
            [(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, self.servicer)],
            [SERVICE_NAME], self.auth, server_credentials(self.team.orchestrator_tls), self.address)
        if not self.auth.enabled and not _loopback(self.address):
            log.warning("OrchestratorService on %s has no token: anyone who reaches it can run episodes "
                        "(set COLLM_ORCHESTRATOR_TOKEN or COLLM_AUTH_TOKEN)", self.address)
        if self._metrics_port is not None:
            try:
                self.metrics_port = self.servicer.metrics.serve(self._metrics_port, self.address.rpartition(":")[0])
            except OSError as e:
                raise BindError(f"cannot serve metrics on port {self._metrics_port}: {e.strerror}; "
                                "pick a free --metrics-port (0 = any free)") from None
        await self.server.start()
        await set_health(self._health, [SERVICE_NAME], serving=True)
        return self

    async def stop(self, grace: float = 30.0) -> None:
        """Drain: health NOT_SERVING, new episodes UNAVAILABLE, running ones get `grace` s."""
        self.servicer.draining = True
        await set_health(self._health, [SERVICE_NAME], serving=False)
        await self.server.stop(grace=grace)
        await self.servicer.shutdown()
        await self.pool.aclose()
        if not isinstance(self._traces, TraceStore):
            self.store.close()

    async def __aenter__(self) -> OrchestratorServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop(grace=1.0)


async def serve(team: TeamConfig, *, drain_s: float = 30.0, **kw) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code. Announces JSON life-cycle lines."""
    server = await OrchestratorServer(team, **kw).start()
    announce("serving", service="orchestrator", task=team.task, port=server.port, metrics_port=server.metrics_port,
             traces=server.store.path,
             auth=server.auth.enabled, tls=team.orchestrator_tls is not None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        announce("draining", service="orchestrator")
        await server.stop(grace=drain_s)
        announce("stopped", service="orchestrator", exit_code=0)
    return 0


def run(team: TeamConfig, **kw) -> int:
    if not logging.getLogger().handlers:  # the CLI's --log-level / --log-format set it up already
        from collm_serve.logs import configure_logging

        configure_logging()
    return asyncio.run(serve(team, **kw))
