"""Fixtures of the reliability suite: one fast agent (tiny model, few tokens, small admission
bound) shared by every module, and its adapter root."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import start_agent
from tests.reliability.helpers import FAST_AGENT, Adapters, make_adapters


@pytest.fixture(scope="session")
def _agent_and_adapters(tmp_path_factory):
    """The adapters are made while the agent starts (both take seconds; the agent needs only
    the root folder to exist)."""
    tmp = tmp_path_factory.mktemp("reliability")
    root = tmp / "adapters"
    root.mkdir()
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(start_agent, tmp, "helper", adapter_root=str(root), **FAST_AGENT)
        try:
            adapters = make_adapters(root)
        except BaseException:
            if starting.exception() is None:
                starting.result().stop()
            raise
        agent = starting.result()
    yield agent, adapters
    agent.stop()


@pytest.fixture(scope="session")
def adapters(_agent_and_adapters) -> Adapters:
    return _agent_and_adapters[1]


@pytest.fixture(scope="session")
def fast_agent(_agent_and_adapters):
    return _agent_and_adapters[0]
