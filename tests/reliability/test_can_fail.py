"""Every test can fail: the reliability tests themselves, run against a deliberately broken
agent, must fail, and for the right reason.

The agent process loads `broken/sitecustomize.py` (PYTHONPATH + COLLM_BREAK; nothing in
collm_serve knows about it) with three faults: it drops the adapter version from every
response, leaks 64 KiB per Generate, and wedges after the first INVALID_ARGUMENT. The tests
below run in file order: the wedge goes last because it stops the agent serving for good.
The same faults can break the whole suite from the command line (README.md).
"""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import start_agent
from tests.reliability import helpers
from tests.reliability import test_bad_input as bad_input
from tests.reliability import test_faults as faults
from tests.reliability import test_load as load
from tests.reliability.helpers import FAST_AGENT, broken_env


@pytest.fixture(scope="module")
def broken_agent(tmp_path_factory, adapters):
    with pytest.MonkeyPatch.context() as mp:
        for key, value in broken_env("drop_version", "leak", "wedge").items():
            mp.setenv(key, value)
        agent = start_agent(tmp_path_factory.mktemp("broken"), "helper", adapter_root=str(adapters.root),
                            **FAST_AGENT)
    yield agent
    agent.stop()


def expect_failure(test, *args, match: str) -> str:
    with pytest.raises(AssertionError) as failed:
        test(*args)
    message = str(failed.value)
    print(f"\n{test.__module__}.{test.__name__} against the broken agent failed as it should:\n"
          f"{message[:600]}")
    assert match in message, message
    return message


def test_swap_test_fails_when_the_version_is_dropped(broken_agent, adapters):
    expect_failure(faults.test_corrupt_adapter_during_swap_old_version_keeps_serving,
                   broken_agent, adapters, match="assert (0, '') == (1, ")


def test_load_test_fails_when_the_server_leaks(broken_agent):
    expect_failure(load.check_load, broken_agent, match="server RSS grew")


def test_fuzz_fails_when_the_server_wedges_after_a_bad_request(broken_agent, monkeypatch):
    monkeypatch.setattr(helpers, "CALL_TIMEOUT", 5.0)  # the wedge shows as a deadline, sooner
    with grpc.insecure_channel(broken_agent.address) as channel:
        expect_failure(bad_input.test_fuzz_generate, broken_agent, channel, match="DEADLINE_EXCEEDED")
