"""Auth, TLS/mTLS, backpressure and graceful drain on real servers (transformers engine, tiny model)."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from collm_serve.client import (
    AgentClient,
    AsyncAgentClient,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from tests.certs import make_pki
from tests.conftest import start_agent, wait_event, wait_in_engine

USER = [{"role": "user", "content": "Say something."}]
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secured")
    pki = make_pki(tmp)
    other = make_pki(tmp, "other-ca")
    agent = start_agent(tmp, "helper", auth_token=TOKEN,
                        tls={"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]),
                             "client_ca_file": str(pki["ca"])})
    yield agent, pki, other
    agent.stop()


def _client(agent, pki, token=TOKEN, cert=True, ca=None):
    return AgentClient(agent.address, token=token, root_certificates=ca or pki["ca"], retries=0,
                       client_cert=pki["client_cert"] if cert else None,
                       client_key=pki["client_key"] if cert else None, timeout=30)


def test_mtls_with_token_works_end_to_end(secured):
    agent, pki, _ = secured
    with _client(agent, pki) as c:
        assert c.generate(messages=USER, max_tokens=3).token_ids
        assert c.info().tls_enabled and c.info().auth_enabled


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_every_rpc_refuses_missing_or_wrong_token(secured, token):
    agent, pki, _ = secured
    with _client(agent, pki, token=token) as c:
        calls = [lambda: c.generate(messages=USER, max_tokens=2), c.info, c.list_adapters,
                 lambda: c.abort(["x"]), lambda: c.load_adapter("x"), c.rollback_adapter,
                 lambda: c.activate_adapter(1), lambda: c.unload_adapter(1),
                 lambda: list(c.generate_stream(messages=USER, max_tokens=2))]
        for call in calls:
            with pytest.raises(UnauthenticatedError):
                call()


def test_client_without_the_ca_or_without_a_cert_fails(secured):
    agent, pki, other = secured
    with _client(agent, pki, ca=other["ca"]) as c:  # server cert not trusted
        with pytest.raises(UnavailableError):
            c.info()
    with _client(agent, pki, cert=False) as c:  # mTLS: no client certificate
        with pytest.raises(UnavailableError):
            c.info()
    with AgentClient(agent.address, token=TOKEN, retries=0, timeout=5) as c:  # plaintext to a TLS port
        with pytest.raises(UnavailableError):
            c.info()
    with _client(agent, pki) as c:  # and the server still serves
        assert c.generate(messages=USER, max_tokens=2).token_ids


def test_queue_bound_gives_resource_exhausted_and_recovers(tmp_path):
    agent = start_agent(tmp_path, "helper", max_concurrent_requests=1, max_queued_requests=2)
    try:
        async def burst():
            async with AsyncAgentClient(agent.address, retries=0, timeout=120) as c:
                return await asyncio.gather(
                    *[c.generate(messages=USER, max_tokens=40, temperature=1.0, seed=i) for i in range(12)],
                    return_exceptions=True)

        results = asyncio.run(burst())
        errors = [r for r in results if isinstance(r, Exception)]
        ok = [r for r in results if not isinstance(r, Exception)]
        assert errors and all(isinstance(e, ResourceExhaustedError) for e in errors), errors
        assert len(ok) >= 3 and all(o.token_ids for o in ok)
        assert "queue full" in errors[0].details
        with AgentClient(agent.address) as c:
            assert c.generate(messages=USER, max_tokens=2).token_ids
    finally:
        agent.stop()


def test_sigterm_drains_in_flight_and_refuses_new(tmp_path):
    agent = start_agent(tmp_path, "helper", max_tokens_limit=400)
    result = {}

    def long_request():
        with AgentClient(agent.address, retries=0, timeout=120) as c:
            result["out"] = c.generate(messages=USER, max_tokens=150, temperature=1.0, seed=1, stop=["\x00never"])

    t = threading.Thread(target=long_request)
    t.start()
    wait_in_engine(agent)
    agent.proc.send_signal(signal.SIGTERM)
    draining = wait_event(agent, "draining")  # from here on new requests are refused
    with AgentClient(agent.address, retries=0, timeout=10) as c:
        with pytest.raises(UnavailableError):
            c.generate(messages=USER, max_tokens=2)
    t.join(120)
    assert "out" in result and len(result["out"].token_ids) > 0
    assert agent.proc.wait(60) == 0
    assert draining["in_flight"] >= 1, "the long request had finished before SIGTERM: test proves nothing"
    assert result["out"].finish_reason == "length" and len(result["out"].token_ids) == 150
