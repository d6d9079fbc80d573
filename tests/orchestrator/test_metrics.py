"""Orchestrator metrics (collm_serve/metrics.py OrchestratorMetrics) on the orchestrator's
optional metrics port: episodes by status, failures by reason kind, turn latency, rewards."""

from __future__ import annotations

import urllib.request

import grpc

from collm_serve.metrics import OrchestratorMetrics, failure_kind
from collm_serve.orchestrator.events import EpisodeFinished, EpisodeOutcome, EpisodeStarted
from collm_serve.orchestrator.service import OrchestratorServer
from collm_serve.proto.collm.v1 import orchestrator_pb2 as pb
from collm_serve.proto.collm.v1 import orchestrator_pb2_grpc


def samples(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def test_episodes_turns_and_rewards_are_served(team_for):
    team = team_for("toy", seed=7)
    async with OrchestratorServer(team, port=0, metrics_port=0) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            r = await stub.RunEpisode(pb.RunEpisodeRequest(episode=pb.EpisodeSpec(problem_index=0)))
        m = samples(server.metrics_port)
    assert r.status == pb.EPISODE_STATUS_OK
    assert m['collm_orchestrator_episodes_total{status="ok",task="toy"}'] == 1
    assert m['collm_orchestrator_turn_latency_seconds_count{task="toy"}'] == len(r.turns)
    assert m['collm_orchestrator_turn_reward_sum{task="toy"}'] == sum(t.reward for t in r.turns)
    assert m['collm_orchestrator_episode_return_sum{task="toy"}'] == r.final_return
    assert m['collm_orchestrator_episode_return_count{task="toy"}'] == 1
    assert m['collm_orchestrator_action_latency_seconds_count{agent="helper",task="toy"}'] == len(r.turns)
    assert m['collm_orchestrator_episodes_running{task="toy"}'] == 0


def test_failures_are_counted_by_a_bounded_reason():
    metrics = OrchestratorMetrics()
    metrics.observe(EpisodeStarted("e1", "toy", "train", "toy/0", 0, 1, 1, ("helper", "main")))
    metrics.observe(EpisodeFinished(EpisodeOutcome("e1", "toy", "train", "toy/0", 0, 1, status="failed",
                                                   final_return=None,
                                                   failure_reason="agent helper at h:1: UNAVAILABLE after 3 tries")))
    assert metrics.failures.labels("toy", "UNAVAILABLE")._value.get() == 1
    assert metrics.episodes.labels("toy", "failed")._value.get() == 1
    assert metrics.running.labels("toy")._value.get() == 0
    assert failure_kind("episode error: KeyError: 'x'") == "episode_error"
    assert failure_kind("interrupted (client cancelled the call or its deadline passed)") == "interrupted"
    assert failure_kind("something odd") == "other"
