"""Listening and dialling addresses: a port in use is refused (gRPC's SO_REUSEPORT is off), an
address without a port is refused instead of dialling 443 (collm_serve/addresses.py, server.py).
The CLI messages are checked in tests/test_new_user.py."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from collm_serve.addresses import check_address
from collm_serve.rpc import BindError, build_grpc_server
from collm_serve.team import TeamConfig


def _server(address: str):
    return build_grpc_server([], [], None, None, address)


def test_two_servers_on_one_port_the_second_fails():
    """With gRPC's default SO_REUSEPORT both would listen and the kernel would split the
    connections between them: traffic and hot-swaps silently going to two processes."""

    async def run():
        first, port, _ = _server("127.0.0.1:0")
        await first.start()
        try:
            with pytest.raises(BindError, match=rf"127\.0\.0\.1:{port}: port {port} is already in use.*--port"):
                _server(f"127.0.0.1:{port}")
        finally:
            await first.stop(None)

    asyncio.run(run())


def test_a_default_grpc_server_cannot_share_our_port_either():
    """Ours does not set SO_REUSEPORT on its socket, so even a server that does cannot join it."""

    async def run():
        ours, port, _ = _server("127.0.0.1:0")
        await ours.start()
        other = grpc.aio.server()  # SO_REUSEPORT on, gRPC's default
        try:
            with pytest.raises(RuntimeError):
                other.add_insecure_port(f"127.0.0.1:{port}")
        finally:
            await ours.stop(None)

    asyncio.run(run())


def test_bind_error_names_a_host_that_is_not_ours():
    async def run():
        with pytest.raises(BindError, match="not an address of this machine"):
            _server("192.0.2.1:0")  # TEST-NET-1: never a local address

    asyncio.run(run())


def test_a_plain_listener_blocks_the_port_and_a_free_one_still_works():
    async def run():
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            with pytest.raises(BindError, match="already in use"):
                _server(f"127.0.0.1:{port}")
        server, bound, _ = _server("127.0.0.1:0")
        await server.start()
        await server.stop(None)
        assert bound > 0

    asyncio.run(run())


@pytest.mark.parametrize("address", ["localhost:50061", "[::1]:5", "10.0.0.1:65535", "unix:/tmp/agent.sock",
                                     "dns:///agents.local:443"])
def test_addresses_with_a_port_pass(address):
    assert check_address(address) == address


@pytest.mark.parametrize(("address", "example"), [
    ("localhost", "localhost:50061"), ("::1", "[::1]:50061"), ("[::1]", "[::1]:50061"), ("", "localhost:50061"),
])
def test_address_without_a_port_is_refused_with_the_form(address, example):
    with pytest.raises(ValueError, match=r"has no port \(gRPC would dial 443\); write host:port, e\.g\. "
                                         + example.replace("[", r"\[").replace("]", r"\]")):
        check_address(address)


@pytest.mark.parametrize("address", ["h:0", "h:x", "h:70000"])
def test_bad_port_is_refused(address):
    with pytest.raises(ValueError, match="is not a number in 1..65535"):
        check_address(address)


def test_team_file_address_without_a_port_is_refused():
    with pytest.raises(ValueError, match="agents.helper.address|address 'localhost' has no port"):
        TeamConfig(task="toy", agents={"helper": {"address": "localhost"}, "main": {"address": "localhost:2"}})


def test_entering_a_started_agent_does_not_start_a_second_one(tmp_path):
    """`with start_agent(...) as a:` (start_agent already started it) once orphaned a second,
    still-serving agent process per run."""
    from tests.conftest import start_agent

    agent = start_agent(tmp_path, "helper")
    first = agent.proc.pid
    with agent as entered:
        assert entered is agent and agent.proc.pid == first
        with pytest.raises(RuntimeError, match="already running"):
            agent.start()
    assert not agent.running
