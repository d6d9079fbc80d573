"""Roles on an agent (collm_serve/auth.py): the inference token generates but cannot swap
adapters, the admin token can; mTLS client identities (CN or SAN) map to roles; the trainer's
push presents the admin token. One real agent (transformers engine, tiny model) with TLS +
mTLS, both tokens and an identities list; adapters made with the project's own factory.

Proof that these tests can fail: `test_role_check_fails_against_flat_roles` runs the same
check against an in-process server whose interceptor knows no admin methods.
"""

from __future__ import annotations

import shutil

import pytest

from collm_serve import auth
from collm_serve.adapters.factory import make_adapter
from collm_serve.adapters.manifest import write_manifest
from collm_serve.client import AgentClient, AsyncAgentClient, PermissionDeniedError, UnauthenticatedError
from collm_serve.models import tiny_model_dir
from collm_serve.proto.collm.v1 import agent_pb2 as pb
from collm_serve.proto.collm.v1 import agent_pb2_grpc
from collm_serve.rpc import build_grpc_server
from collm_serve.team import TeamConfig
from collm_train.push import PushError, push_team
from tests.certs import make_pki
from tests.conftest import start_agent

USER = [{"role": "user", "content": "Say something."}]
INFERENCE, ADMIN = "inference-s3cret", "admin-s3cret"
CLIENTS = {
    "stranger": ("stranger.collm.test", []),  # valid certificate, no role: its token decides
    "collector": ("inference.collm.test", []),  # mapped by CN
    "trainer": ("ops-laptop", ["trainer.collm.test"]),  # mapped by SAN
}
IDENTITIES = {"inference": ["inference.collm.test"], "admin": ["trainer.collm.test"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roles")
    pki = make_pki(tmp, clients=CLIENTS)
    root = tmp / "adapters"
    v1 = make_adapter(tiny_model_dir(), root / "helper" / "v1", name="helper", version=1,
                      base_model_id="tiny-llama-s0", prompt_ids=[1], target="", rank=4, steps=0, seed=1)
    v2 = shutil.copytree(v1, root / "helper" / "v2")
    write_manifest(v2, name="helper", version=2, base_model="tiny-llama-s0", algorithm="test")
    agent = start_agent(tmp, "helper", auth_token=INFERENCE, admin_token=ADMIN, adapter_root=str(root),
                        keep_versions=2, tls={"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]),
                                              "client_ca_file": str(pki["ca"]), "identities": IDENTITIES})
    yield agent, pki, {1: v1, 2: v2}
    agent.stop()


def client(agent, pki, who: str = "stranger", token: str | None = None) -> AgentClient:
    return AgentClient(agent.address, token=token, root_certificates=pki["ca"], client_cert=pki[f"{who}_cert"],
                       client_key=pki[f"{who}_key"], server_name="localhost", retries=0, timeout=60)


def admin_calls(c, adapters) -> dict:
    return {"LoadAdapter": lambda: c.load_adapter(adapters[1], 1, activate=True),
            "ActivateAdapter": lambda: c.activate_adapter(use_base_model=True),
            "RollbackAdapter": c.rollback_adapter,
            "UnloadAdapter": lambda: c.unload_adapter(1, force=True)}


def assert_cannot_swap(c, adapters) -> None:
    before = c.list_adapters()
    for name, call in admin_calls(c, adapters).items():
        with pytest.raises(PermissionDeniedError, match=f"{name} needs the admin role"):
            call()
    assert c.list_adapters() == before, "a refused call changed the adapters"


def test_inference_token_generates_but_cannot_swap(setup):
    agent, pki, adapters = setup
    with client(agent, pki, token=INFERENCE) as c:
        assert c.generate(messages=USER, max_tokens=2).token_ids
        assert [chunk for chunk in c.generate_stream(messages=USER, max_tokens=2)]
        assert c.info().auth_enabled and c.info().tls_enabled
        assert c.abort(["nothing-running"]) == []
        assert_cannot_swap(c, adapters)


def test_admin_token_swaps_adapters_and_generates(setup):
    agent, pki, adapters = setup
    with client(agent, pki, token=ADMIN) as c:
        loaded = c.load_adapter(adapters[1], 1, activate=True)
        assert loaded.active.version == 1
        assert c.generate(messages=USER, max_tokens=2).adapter.version == 1  # admin implies inference
        assert c.activate_adapter(use_base_model=True).active.version == 0
        assert c.rollback_adapter().active.version == 1
        assert c.activate_adapter(use_base_model=True).active.version == 0


def test_mtls_identities_map_to_roles(setup):
    agent, pki, adapters = setup
    with client(agent, pki, "collector") as c:  # CN -> inference, no token
        assert c.generate(messages=USER, max_tokens=2).token_ids
        assert_cannot_swap(c, adapters)
        with pytest.raises(UnauthenticatedError):  # a wrong token is refused, not ignored
            AgentClient(agent.address, token="wrong", root_certificates=pki["ca"], client_cert=pki["collector_cert"],
                        client_key=pki["collector_key"], server_name="localhost", retries=0, timeout=30).info()
    with client(agent, pki, "collector", token=ADMIN) as c:  # the higher of token and certificate
        assert c.activate_adapter(use_base_model=True).active.version == 0
    with client(agent, pki, "trainer") as c:  # SAN -> admin, no token
        assert c.load_adapter(adapters[1], 1, activate=False).adapter.version == 1
        assert c.activate_adapter(use_base_model=True).active.version == 0
    with client(agent, pki, "stranger") as c:  # valid certificate, no role, no token
        with pytest.raises(UnauthenticatedError, match="'stranger.collm.test' has no role"):
            c.generate(messages=USER, max_tokens=2)


def test_trainer_push_presents_the_admin_token(setup):
    agent, pki, adapters = setup
    common = dict(task="toy", agents={"helper": {"address": agent.address}, "main": {"address": agent.address}},
                  ca_file=pki["ca"], client_cert_file=pki["stranger_cert"], client_key_file=pki["stranger_key"])
    inference_only = TeamConfig(auth_token=INFERENCE, **common)
    with pytest.raises(PushError, match="PERMISSION_DENIED: LoadAdapter needs the admin role"):
        push_team({"helper": adapters[2]}, {"helper": "localhost:" + agent.address.rsplit(":", 1)[1]}, inference_only)
    both = TeamConfig(auth_token=INFERENCE, admin_token=ADMIN, **common)
    (result,) = push_team({"helper": adapters[2]}, {"helper": "localhost:" + agent.address.rsplit(":", 1)[1]}, both)
    assert result.version == 2
    with client(agent, pki, token=ADMIN) as c:
        c.activate_adapter(use_base_model=True)


# -- the role check can fail ---------------------------------------------------------------


class _Recorder(agent_pb2_grpc.AgentServiceServicer):
    """Answers LoadAdapter when the door lets the call through (the interceptor is under test)."""

    async def LoadAdapter(self, request, context):
        return pb.LoadAdapterResponse()


async def check_inference_cannot_load(address: str) -> None:
    async with AsyncAgentClient(address, token=INFERENCE, retries=0, timeout=10) as c:
        try:
            await c.load_adapter("x", 1)
        except PermissionDeniedError:
            return
        raise AssertionError("an inference token loaded an adapter")


async def _serve(policy: auth.AuthPolicy):
    server, port, _ = build_grpc_server([(agent_pb2_grpc.add_AgentServiceServicer_to_server, _Recorder())],
                                        ["collm.v1.AgentService"], policy, None, "127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_role_check_fails_against_flat_roles(monkeypatch):
    policy = auth.AuthPolicy.build(INFERENCE, ADMIN)
    server, address = await _serve(policy)
    try:
        await check_inference_cannot_load(address)  # the real interceptor refuses
        monkeypatch.setattr(auth, "ADMIN_METHODS", frozenset())  # broken: no method needs admin
        with pytest.raises(AssertionError, match="an inference token loaded an adapter"):
            await check_inference_cannot_load(address)
    finally:
        await server.stop(None)


async def test_single_token_keeps_meaning_everything():
    """Backward compatibility: an agent with only `auth_token` treats it as admin (trainers that
    push with it keep working); any other token is still refused."""
    server, address = await _serve(auth.AuthPolicy.build(INFERENCE))
    try:
        async with AsyncAgentClient(address, token=INFERENCE, retries=0, timeout=10) as c:
            await c.load_adapter("x", 1)
        async with AsyncAgentClient(address, token=ADMIN, retries=0, timeout=10) as c:
            with pytest.raises(UnauthenticatedError):
                await c.load_adapter("x", 1)
    finally:
        await server.stop(None)


def test_roles_config_errors():
    from collm_serve.config import AgentConfig

    with pytest.raises(ValueError, match="admin_token must differ from auth_token"):
        AgentConfig(name="a", auth_token="same", admin_token="same")
    with pytest.raises(ValueError, match="identities need mTLS"):
        AgentConfig(name="a", tls={"cert_file": __file__, "key_file": __file__, "identities": {"admin": ["x"]}})
    with pytest.raises(ValueError, match="admin_token must not be blank"):
        AgentConfig(name="a", admin_token=" ")
    assert "do-not-log-me" not in repr(auth.AuthPolicy.build("do-not-log-me"))


def test_cli_adapter_commands_read_the_admin_token(monkeypatch):
    """swap / rollback / unload take COLLM_ADMIN_TOKEN first; read-only commands never do."""
    from click.testing import CliRunner

    from collm_serve import cli

    seen = {}

    def record(address, token, *rest, **kw):
        seen[address] = token
        raise cli.CliError("recorded")

    monkeypatch.setattr(cli, "_client", record)
    env = {"COLLM_AUTH_TOKEN": INFERENCE, "COLLM_ADMIN_TOKEN": ADMIN}
    for args in (["rollback"], ["unload", "--version", "1"], ["swap", "--adapter", "x"], ["adapters"], ["info"]):
        CliRunner().invoke(cli.main, [*args, "--address", f"{args[0]}:1"], env=env)
    assert seen == {"rollback:1": ADMIN, "unload:1": ADMIN, "swap:1": ADMIN, "adapters:1": INFERENCE, "info:1": INFERENCE}
    CliRunner().invoke(cli.main, ["rollback", "--address", "single:1"], env={"COLLM_AUTH_TOKEN": INFERENCE,
                                                                           "COLLM_ADMIN_TOKEN": None})
    assert seen["single:1"] == INFERENCE  # one token for everything still works


async def test_orchestrator_presents_the_inference_token_to_agents(setup, tmp_path):
    """Both doors at once: a caller with the orchestrator's token runs an episode; the
    orchestrator reaches the agent over mTLS with the inference token only (no admin needed)."""
    import grpc

    from collm_serve.orchestrator.service import OrchestratorServer
    from collm_serve.proto.collm.v1 import orchestrator_pb2 as opb
    from collm_serve.proto.collm.v1 import orchestrator_pb2_grpc

    agent, pki, _ = setup
    address = "localhost:" + agent.address.rsplit(":", 1)[1]
    member = {"address": address, "timeout_s": 60, "sampling": {"max_tokens": 4}}
    team = TeamConfig(task="toy", agents={"helper": member, "main": member}, traces=str(tmp_path / "t.db"),
                      auth_token=INFERENCE, orchestrator_token="door", ca_file=pki["ca"],
                      client_cert_file=pki["stranger_cert"], client_key_file=pki["stranger_key"],
                      retry={"attempts": 1, "backoff_s": 0})
    async with OrchestratorServer(team, port=0) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            r = await stub.RunEpisode(opb.RunEpisodeRequest(episode=opb.EpisodeSpec(problem_index=0)),
                                      metadata=(("authorization", "Bearer door"),), timeout=120)
    assert r.status == opb.EPISODE_STATUS_OK, r.failure_reason
