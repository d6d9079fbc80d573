"""OrchestratorService over gRPC: RunEpisode, StreamEpisode, errors, health, reflection, and
the `collm-serve orchestrate` entry point as a subprocess."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collm_serve.orchestrator import tree_turns
from collm_serve.orchestrator.service import CALLER_LEFT, OrchestratorServer
from collm_serve.proto.collm.v1 import orchestrator_pb2 as pb
from collm_serve.proto.collm.v1 import orchestrator_pb2_grpc
from collm_serve.traces import TraceStore
from tests.orchestrator.conftest import REPO, write_team


async def test_run_episode(team_for):
    team = team_for("toy", seed=100)
    async with OrchestratorServer(team, port=0) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            r = await stub.RunEpisode(pb.RunEpisodeRequest(episode=pb.EpisodeSpec(problem_index=1)))
            assert r.status == pb.EPISODE_STATUS_OK and not r.failure_reason
            assert (r.task, r.split, r.problem_id, r.seed, r.group_size) == ("toy", "train", "toy/1", 101, 1)
            (turn,) = r.turns
            assert turn.done and not turn.HasField("parent_turn_id") and set(turn.feedback) == {"helper", "main"}
            assert r.final_return == pytest.approx(turn.reward)

            by_id = await stub.RunEpisode(pb.RunEpisodeRequest(
                episode=pb.EpisodeSpec(problem_id="toy/eval-2", split="eval", seed=5)))
            assert (by_id.status, by_id.problem_id, by_id.seed) == (pb.EPISODE_STATUS_OK, "toy/eval-2", 5)

            for spec, code in [
                (pb.EpisodeSpec(problem_id="toy/nope"), grpc.StatusCode.NOT_FOUND),
                (pb.EpisodeSpec(problem_index=99), grpc.StatusCode.NOT_FOUND),
                (pb.EpisodeSpec(problem_index=0, split="test"), grpc.StatusCode.INVALID_ARGUMENT),
                (pb.EpisodeSpec(), grpc.StatusCode.INVALID_ARGUMENT),
                (pb.EpisodeSpec(problem_index=0, group_size=17), grpc.StatusCode.INVALID_ARGUMENT),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.RunEpisode(pb.RunEpisodeRequest(episode=spec))
                assert e.value.code() == code, spec

            health = health_pb2_grpc.HealthStub(ch)
            status = await health.Check(health_pb2.HealthCheckRequest(service="collm.v1.OrchestratorService"))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    with TraceStore(team.traces, create=False) as store:
        ep = store.get_episode(r.episode_id)
        assert (ep.status, ep.final_return, ep.turns[0].reward) == ("ok", r.final_return, turn.reward)


async def test_stream_episode_events(team_for):
    team = team_for("coding")
    k = 2
    async with OrchestratorServer(team, port=0) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            call = stub.StreamEpisode(pb.StreamEpisodeRequest(episode=pb.EpisodeSpec(problem_index=3, group_size=k)))
            events = [e async for e in call]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("finished") == 1
    started, finished = events[0].started, events[-1].finished
    assert (started.num_turns, started.group_size, list(started.agents)) == (2, k, ["helper", "main"])
    assert finished.status == pb.EPISODE_STATUS_OK and finished.episode_id == started.episode_id
    turns = [e.turn for e in events if e.WhichOneof("event") == "turn"]
    actions = [e.action for e in events if e.WhichOneof("event") == "action"]
    assert len(turns) == tree_turns(k, 2) and list(finished.turns) == turns
    nodes = 1 + k  # the root and its K children act; the leaves' turns end the episode
    assert len(actions) == nodes * 2 * k
    for i, e in enumerate(events):  # a turn comes after the actions taken at its node
        if e.WhichOneof("event") == "turn":
            parent = e.turn.parent_turn_id if e.turn.HasField("parent_turn_id") else None
            acted = {(a.action.agent, a.action.branch_index) for a in events[:i]
                     if a.WhichOneof("event") == "action"
                     and (a.action.parent_turn_id if a.action.HasField("parent_turn_id") else None) == parent}
            assert {("helper", e.turn.branch_index), ("main", e.turn.branch_index)} <= acted
    with TraceStore(team.traces, create=False) as store:
        ep = store.get_episode(started.episode_id)
    texts = {(t.parent_turn_id, t.branch_index, a.agent): a.response_text for t in ep.turns for a in t.actions}
    for a in actions:
        parent = a.parent_turn_id if a.HasField("parent_turn_id") else None
        assert texts[(parent, a.branch_index, a.agent)] == a.text
        assert a.num_tokens > 0 and a.sum_logprob < 0 and a.adapter.version == 0


async def test_client_cancel_interrupts_the_episode(team_for):
    team = team_for("build")  # 4 turns: still running when the client goes away
    async with OrchestratorServer(team, port=0) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            call = stub.StreamEpisode(pb.StreamEpisodeRequest(episode=pb.EpisodeSpec(problem_index=0)))
            first = await call.read()
            await call.read()  # an action: turn 0 is in flight
            call.cancel()
            episode_id = first.started.episode_id
            for _ in range(300):
                if server.store.get_episode(episode_id).status != "running":
                    break
                await asyncio.sleep(0.05)
            ep = server.store.get_episode(episode_id)
    assert (ep.status, ep.failure_reason) == ("failed", f"interrupted ({CALLER_LEFT})"), ep.turns
    assert len(ep.turns) < 4


def test_orchestrate_cli_serves_with_reflection(agents, team_for, tmp_path):
    team_file = write_team(tmp_path / "team.yaml", team_for("writing"))
    proc = subprocess.Popen([sys.executable, "-m", "collm_serve", "orchestrate", "--config", str(team_file),
                             "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "serving" and line["task"] == "writing"
        address = f"127.0.0.1:{line['port']}"
        grpcurl = shutil.which("grpcurl") or str(REPO / ".venv" / "bin" / "grpcurl")
        listed = subprocess.run([grpcurl, "-plaintext", address, "list"], capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0, listed.stderr
        assert "collm.v1.OrchestratorService" in listed.stdout and "grpc.health.v1.Health" in listed.stdout
        called = subprocess.run(
            [grpcurl, "-plaintext", "-d", '{"episode": {"problem_index": 0}}', address,
             "collm.v1.OrchestratorService/RunEpisode"], capture_output=True, text=True, timeout=120)
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout)["status"] == "EPISODE_STATUS_OK"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert [json.loads(x)["event"] for x in proc.stdout.read().splitlines()] == ["draining", "stopped"]
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_unexpected_error_answers_internal_logged_and_counted(team_for, monkeypatch, caplog):
    """A bug inside an RPC (not a CollmError) is INTERNAL without its internals, logged with its
    traceback and counted; before the shared ladder (collm_serve/rpc.py) it went out as UNKNOWN."""
    team = team_for("toy")

    def broken(spec):
        raise RuntimeError("secret internal detail")

    async with OrchestratorServer(team, port=0) as server:
        monkeypatch.setattr(server.servicer, "_resolve", broken)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            request = pb.EpisodeSpec(problem_index=0)
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.RunEpisode(pb.RunEpisodeRequest(episode=request))
            with pytest.raises(grpc.aio.AioRpcError) as stream:
                async for _ in stub.StreamEpisode(pb.StreamEpisodeRequest(episode=request)):
                    pass
        rpcs = server.servicer.metrics.rpcs
        for method in ("RunEpisode", "StreamEpisode"):
            assert rpcs.labels(method, "INTERNAL")._value.get() == 1
    for e in (unary.value, stream.value):
        assert e.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in e.details() and "RuntimeError" not in e.details()
    logged = [r for r in caplog.records if r.name == "collm.orchestrator" and r.exc_info]
    assert {r.getMessage() for r in logged} == {"RunEpisode failed", "StreamEpisode failed"}
    assert all(isinstance(r.exc_info[1], RuntimeError) for r in logged)
