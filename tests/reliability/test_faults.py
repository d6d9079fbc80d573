"""Faults on real agent processes: SIGTERM under load with a second replica to go to, and an
adapter corrupted before and during a swap while requests run.

kill -9 of an agent mid-turn and of the collector are covered where the orchestrator is tested
(tests/orchestrator/test_faults.py, tests/traces/test_concurrency.py); `test_suite_index.py`
checks that those tests still exist. See README.md.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
import uuid

import grpc
import pytest

from collm_serve.adapters.manifest import MANIFEST_FILE, WEIGHTS_FILE
from collm_serve.client import AgentClient, AgentError, FailedPreconditionError, UnavailableError
from tests.conftest import gauge, start_agent, wait_event
from tests.reliability.helpers import (
    PROMPT,
    assert_served_by,
    flip_byte,
    generate_anywhere,
    greedy,
    manifest_sha,
)

LONG_TOKENS = 24
N_LONG = 6


def test_sigterm_under_load_drains_and_clients_go_elsewhere(tmp_path, fast_agent):
    """Replica A gets SIGTERM with requests running and queued: all of them finish; a new
    request to A gets UNAVAILABLE at once, a retrying client gives up with UnavailableError, and
    a client that knows replica B (the shared fast agent) is served there."""
    a = start_agent(tmp_path, "helper", max_tokens_limit=64, max_concurrent_requests=2, max_queued_requests=16,
                    drain_seconds=120)
    replicas = [a.address, fast_agent.address]
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def long_request(i: int) -> None:
        with AgentClient(a.address, retries=0, timeout=180) as c:
            try:
                results[i] = c.generate(messages=PROMPT, max_tokens=LONG_TOKENS, min_tokens=LONG_TOKENS,
                                        temperature=1.0, seed=i, stop=["\x00never"])
            except Exception as e:  # noqa: BLE001 - asserted empty below
                errors.append(e)

    threads = [threading.Thread(target=long_request, args=(i,)) for i in range(N_LONG)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while gauge(a, "collm_requests_in_flight") + gauge(a, "collm_queue_depth") < N_LONG:
            assert time.monotonic() < deadline, "the long requests never all got in"
            time.sleep(0.05)
        a.proc.send_signal(signal.SIGTERM)
        draining = wait_event(a, "draining")  # from here on new requests are refused

        with AgentClient(a.address, retries=0, timeout=10) as c:  # refused at once, not queued
            with pytest.raises(UnavailableError) as refused:
                c.generate(messages=PROMPT, max_tokens=2)
        assert "draining" in refused.value.details
        started = time.monotonic()
        with AgentClient(a.address, retries=2, backoff=0.05, timeout=10) as c:  # retries, then fails clearly
            with pytest.raises(UnavailableError):
                c.generate(messages=PROMPT, max_tokens=2)
        assert time.monotonic() - started < 10
        served_by, out = generate_anywhere(replicas, messages=PROMPT, max_tokens=2)
        assert served_by == fast_agent.address and out.token_ids

        for t in threads:
            t.join(180)
        assert not errors, errors
        assert sorted(results) == list(range(N_LONG))
        for out in results.values():  # finished in full, not cut short by the shutdown
            assert out.finish_reason == "length" and len(out.token_ids) == LONG_TOKENS
        assert a.proc.wait(60) == 0
        assert draining["in_flight"] >= 1, "nothing was in flight at SIGTERM: the test proves nothing"

        # A is gone (connection refused): still UNAVAILABLE, still served elsewhere
        with AgentClient(a.address, retries=1, backoff=0.05, timeout=10) as c:
            with pytest.raises(UnavailableError):
                c.info()
        served_by, out = generate_anywhere(replicas, messages=PROMPT, max_tokens=2)
        assert served_by == fast_agent.address and out.token_ids
    finally:
        a.stop()
        for t in threads:
            t.join(5)


def flip_in_place(path, offset: int) -> None:
    """Flip one byte without rewriting the file (a reader never sees it shorter)."""
    with open(path, "r+b") as f:
        f.seek(offset, 2)
        byte = f.read(1)[0]
        f.seek(offset, 2)
        f.write(bytes([byte ^ 0xFF]))


def _corrupt(folder, kind: str) -> None:
    weights = folder / WEIGHTS_FILE
    if kind == "flipped_byte":
        flip_byte(weights, -10)
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif kind == "empty_weights":
        weights.write_bytes(b"")
    elif kind == "garbage_header":
        flip_byte(weights, 12)
    elif kind == "manifest":
        (folder / MANIFEST_FILE).write_text("{\"name\": \"helper\", \"version\": ")


def _reset_to_v1(c: AgentClient, adapters) -> None:
    """Activate v1 and unload v2 (once the requests still running on v2 have finished)."""
    c.load_adapter(adapters.v1, activate=True)
    deadline = time.monotonic() + 60
    while 2 in [a.version for a in c.list_adapters().adapters]:
        try:
            c.unload_adapter(2)
        except FailedPreconditionError:  # "v2 is serving N request(s)"
            assert time.monotonic() < deadline, "v2 never became idle"
            time.sleep(0.05)


def test_corrupt_adapter_during_swap_old_version_keeps_serving(fast_agent, adapters):
    """v1 serves under load while corrupted copies of v2 are swapped in: corrupted before the
    call, and corrupted (a byte flipped in place, or truncated) while the call runs, at several
    points of the load. Every swap of a corrupt file is refused and leaves v1 active; every
    response, throughout, comes from pristine weights: v1's, or v2's if the file was damaged
    only after the engine had read it and the load had re-checked it.

    A flip between the load's sha256 check and the engine's read used to be served under v2's
    sha256 (the registry now loads a private copy, hashed after copying: the engine never reads the
    published folder, so a later change or truncation cannot reach it)."""
    work = adapters.root / "helper" / f"swap-{uuid.uuid4().hex[:8]}"  # inside the adapter root
    with AgentClient(fast_agent.address, retries=0, timeout=60) as c:
        c.load_adapter(adapters.v2, activate=True)
        ref2 = greedy(c).token_ids
        _reset_to_v1(c, adapters)
        ref1 = greedy(c).token_ids
        sha1, sha2 = manifest_sha(adapters.v1), manifest_sha(adapters.v2)
        assert ref1 != ref2, "v1 and v2 answer alike: the test could not tell them apart"
        pristine = {1: (sha1, ref1), 2: (sha2, ref2)}

        served: list = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def background() -> None:
            with AgentClient(fast_agent.address, retries=0, timeout=60) as bc:
                while not stop.is_set():
                    try:
                        served.append(greedy(bc))
                    except Exception as e:  # noqa: BLE001 - asserted empty below
                        failures.append(e)

        workers = [threading.Thread(target=background) for _ in range(2)]
        for w in workers:
            w.start()
        try:
            for kind in ("flipped_byte", "truncated", "empty_weights", "garbage_header", "manifest"):
                bad = shutil.copytree(adapters.v2, work / f"bad-{kind}")
                _corrupt(bad, kind)
                with pytest.raises(AgentError) as refused:
                    c.load_adapter(bad, activate=True)
                assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, (kind, refused.value)
                listing = c.list_adapters()
                assert (listing.active.version, listing.active.sha256) == (1, sha1), kind
                assert [a.version for a in listing.adapters] == [1] and len(listing.engine_lora_ids) == 1

            outcomes = []
            races = [("flip", d) for d in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3)] + [
                ("truncate", d) for d in (0.005, 0.02)]
            for i, (kind, delay) in enumerate(races):
                racing = shutil.copytree(adapters.v2, work / f"race-{i}")
                weights = racing / WEIGHTS_FILE
                corrupt = ((lambda: flip_in_place(weights, -1)) if kind == "flip"
                           else (lambda: weights.write_bytes(weights.read_bytes()[:1000])))
                cut = threading.Timer(delay, corrupt)
                cut.start()
                try:
                    r = c.load_adapter(racing, activate=True)
                    outcomes.append(f"{kind}@{delay}s: loaded")
                    assert r.active.version == 2 and r.adapter.sha256 == sha2
                    assert_served_by(greedy(c), 2, sha2, ref2)  # the pristine bytes, read before the cut
                except AgentError as e:
                    outcomes.append(f"{kind}@{delay}s: {e.code.name}")
                    assert e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), e
                    assert_served_by(greedy(c), 1, sha1, ref1)
                finally:
                    cut.join()
                    _reset_to_v1(c, adapters)
            print(f"swaps raced with corruption: {outcomes}")
        finally:
            stop.set()
            for w in workers:
                w.join(60)
    assert not failures, failures[:3]
    assert len(served) >= 5
    for out in served:
        version = out.adapter.version
        assert version in pristine, f"served by v{version!r}"
        assert_served_by(out, version, *pristine[version])
