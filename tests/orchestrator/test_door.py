"""The orchestrator's door: bearer token, TLS, mTLS identities (collm_serve/auth.py), with
health and reflection left open for probes.

No agent runs here: every call names a problem that does not exist, so a call that gets past
the door is answered NOT_FOUND by the servicer, and one the door stops gets UNAUTHENTICATED or
PERMISSION_DENIED. `check_door` is shared with the test that runs it against an open door.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from collm_serve import auth
from collm_serve.orchestrator.service import OrchestratorServer
from collm_serve.proto.collm.v1 import orchestrator_pb2 as pb
from collm_serve.proto.collm.v1 import orchestrator_pb2_grpc
from collm_serve.team import TeamConfig
from tests.certs import make_pki
from tests.orchestrator.conftest import REPO

TOKEN = "orchestrator-s3cret"
AGENT_TOKEN = "agents-inference-s3cret"
SERVICE = "collm.v1.OrchestratorService"
NOWHERE = {"helper": {"address": "127.0.0.1:9"}, "main": {"address": "127.0.0.1:9"}}  # never called
MISSING = pb.EpisodeSpec(problem_id="toy/no-such-problem")
CLIENTS = {"runner": ("episodes.collm.test", []), "stranger": ("stranger.collm.test", [])}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("door-pki"), clients=CLIENTS)


def team(tmp_path, **kw) -> TeamConfig:
    return TeamConfig(task="toy", agents=NOWHERE, traces=str(tmp_path / "traces.db"), **kw)


def tls_section(pki, **kw) -> dict:
    return {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]), **kw}


def channel(port: int, pki=None, client: str | None = None) -> grpc.aio.Channel:
    if pki is None:
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    creds = grpc.ssl_channel_credentials(
        pki["ca"].read_bytes(),
        private_key=pki[f"{client}_key"].read_bytes() if client else None,
        certificate_chain=pki[f"{client}_cert"].read_bytes() if client else None)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])


async def code_of(ch: grpc.aio.Channel, token: str | None, stream: bool = False) -> grpc.StatusCode:
    """Status of one RunEpisode / StreamEpisode call for a missing problem, sending `token`."""
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
    metadata = (("authorization", token),) if token is not None else None
    try:
        if stream:
            async for _ in stub.StreamEpisode(pb.StreamEpisodeRequest(episode=MISSING), metadata=metadata, timeout=20):
                pass
        else:
            await stub.RunEpisode(pb.RunEpisodeRequest(episode=MISSING), metadata=metadata, timeout=20)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def check_door(ch: grpc.aio.Channel, token: str) -> None:
    """No token, a wrong token, a token without 'Bearer ': UNAUTHENTICATED on both RPCs;
    health and reflection answer without a token; the right token gets through."""
    for sent in (None, "Bearer wrong", token, f"Bearer {token}x", "Bearer "):
        for stream in (False, True):
            code = await code_of(ch, sent, stream)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (
                f"{'StreamEpisode' if stream else 'RunEpisode'} with authorization={sent!r} answered {code.name}")
    status = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    listed = [r async for r in reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)]
    assert SERVICE in {s.name for s in listed[0].list_services_response.service}
    for stream in (False, True):
        assert await code_of(ch, f"Bearer {token}", stream) == grpc.StatusCode.NOT_FOUND


async def test_token_door(tmp_path):
    async with OrchestratorServer(team(tmp_path, orchestrator_token=TOKEN, auth_token=AGENT_TOKEN), port=0) as s:
        async with channel(s.port) as ch:
            await check_door(ch, TOKEN)
            # the agents' token is theirs: it does not open a door that has its own token
            assert await code_of(ch, f"Bearer {AGENT_TOKEN}") == grpc.StatusCode.UNAUTHENTICATED


async def test_door_falls_back_to_the_agents_token(tmp_path):
    async with OrchestratorServer(team(tmp_path, auth_token=AGENT_TOKEN), port=0) as s:
        async with channel(s.port) as ch:
            await check_door(ch, AGENT_TOKEN)


async def test_tls_and_mtls_identities(tmp_path, pki):
    tls = tls_section(pki, client_ca_file=str(pki["ca"]), identities={"inference": ["episodes.collm.test"]})
    async with OrchestratorServer(team(tmp_path, orchestrator_token=TOKEN, orchestrator_tls=tls), port=0) as s:
        async with channel(s.port, pki, "stranger") as ch:  # a valid certificate with no role: the token decides
            await check_door(ch, TOKEN)
        async with channel(s.port, pki, "runner") as ch:  # mapped certificate: no token needed
            assert await code_of(ch, None) == grpc.StatusCode.NOT_FOUND
            assert await code_of(ch, "Bearer wrong") == grpc.StatusCode.UNAUTHENTICATED  # a bad token is never ignored
        async with channel(s.port, pki) as ch:  # no client certificate: the handshake fails
            assert await code_of(ch, f"Bearer {TOKEN}") == grpc.StatusCode.UNAVAILABLE
        async with channel(s.port) as ch:  # plaintext to a TLS port
            assert await code_of(ch, f"Bearer {TOKEN}") == grpc.StatusCode.UNAVAILABLE


async def test_door_test_fails_against_an_open_door(tmp_path, monkeypatch):
    """The checks above can fail: with an interceptor that lets every call in, `check_door`
    fails on its first call (the missing problem reaches the servicer: NOT_FOUND)."""
    async def open_door(self, continuation, details):
        return await continuation(details)

    monkeypatch.setattr(auth.AuthInterceptor, "intercept_service", open_door)
    async with OrchestratorServer(team(tmp_path, orchestrator_token=TOKEN), port=0) as s:
        async with channel(s.port) as ch:
            with pytest.raises(AssertionError, match="RunEpisode with authorization=None answered NOT_FOUND"):
                await check_door(ch, TOKEN)


async def test_open_door_on_a_public_address_is_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="collm.orchestrator"):
        async with OrchestratorServer(team(tmp_path), host="0.0.0.0", port=0) as s:
            assert not s.auth.enabled
    assert "has no token: anyone who reaches it can run episodes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="collm.orchestrator"):
        async with OrchestratorServer(team(tmp_path, orchestrator_token=TOKEN), host="0.0.0.0", port=0):
            pass
    assert "has no token" not in caplog.text


async def test_orchestrate_cli_token_from_env_and_tls_flags(tmp_path, pki):
    """`collm-serve orchestrate --tls-cert/--tls-key/--tls-client-ca` + COLLM_ORCHESTRATOR_TOKEN."""
    team_file = tmp_path / "team.yaml"
    team_file.write_text(yaml.safe_dump(team(tmp_path).model_dump(mode="json", exclude_none=True)))
    env = {**os.environ, "COLLM_ORCHESTRATOR_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "collm_serve", "orchestrate", "--config", str(team_file), "--port", "0",
         "--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["server_key"]),
         "--tls-client-ca", str(pki["ca"])],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = json.loads(proc.stdout.readline() or "{}")
        assert (line.get("event"), line.get("auth"), line.get("tls")) == ("serving", True, True), proc.stderr.read()
        async with channel(line["port"], pki, "stranger") as ch:
            await check_door(ch, TOKEN)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
