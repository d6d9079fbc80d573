"""Threads sharing a store, two stores on one file, and kill -9 of a writing process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from collm_serve.traces.store import TraceStore
from tests.traces.crash_writer import TOKENS, TURNS
from tests.traces.helpers import make_episode, make_turn

REPO = Path(__file__).resolve().parents[2]


def _writer(store: TraceStore, worker: int, n_episodes: int, errors: list) -> None:
    try:
        for i in range(n_episodes):
            eid = store.begin_episode(
                make_episode(problem_id=f"w{worker}-{i}", seed=i, episode_id=f"w{worker}-{i}")
            )
            parent = None
            for d in range(3):
                parent = store.append_turn(eid, make_turn(d, parent, 1000 * worker + 10 * i + d))
            store.finish_episode(eid, "ok", float(worker))
    except BaseException as e:  # surface in the main thread
        errors.append(e)


def _check_written(store: TraceStore, workers: int, n_episodes: int) -> None:
    eps = {e.episode_id: e for e in store.iter_episodes()}
    assert len(eps) == workers * n_episodes
    for w in range(workers):
        for i in range(n_episodes):
            ep = eps[f"w{w}-{i}"]
            assert ep.final_return == float(w)
            assert [t.turn_index for t in ep.turns] == [0, 1, 2]
            assert [t.parent_turn_id for t in ep.turns] == [None] + [
                t.turn_id for t in ep.turns[:-1]
            ]
            for d, t in enumerate(ep.turns):
                expected = make_turn(d, t.parent_turn_id, 1000 * w + 10 * i + d)
                assert t.actions == expected.actions
    assert store.integrity_check() == "ok"


def test_four_threads_share_one_store(tmp_path):
    errors: list = []
    with TraceStore(tmp_path / "t.db") as store:
        stop = threading.Event()

        def reader():  # iterating while others write must neither fail nor block them
            try:
                while not stop.is_set():
                    for ep in store.iter_episodes():
                        assert len(ep.turns) == 3
                    store.stats()
            except BaseException as e:
                errors.append(e)

        r = threading.Thread(target=reader)
        r.start()
        threads = [threading.Thread(target=_writer, args=(store, w, 8, errors)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        r.join(60)
        assert not errors, errors
        _check_written(store, 4, 8)


def test_two_stores_on_one_file(tmp_path):
    """Separate connections (as separate processes would have) contend via SQLite locks."""
    errors: list = []
    stores = [TraceStore(tmp_path / "t.db") for _ in range(2)]
    threads = [
        threading.Thread(target=_writer, args=(stores[w % 2], w, 6, errors)) for w in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for s in stores:
        s.close()
    with TraceStore(tmp_path / "t.db") as store:
        _check_written(store, 4, 6)


def _run_and_kill(db: Path, pause_s: float, acks_before_kill: int, rng: random.Random | None):
    """Start the writer, kill -9 it; return (acked {id: i}, begun ids) it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.traces.crash_writer", str(db), str(pause_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    acked: dict[str, int] = {}
    begun: list[str] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            kind, eid, *rest = line.split()
            if kind == "ACK":
                acked[eid] = int(rest[0])
            else:
                begun.append(eid)
            if len(acked) >= acks_before_kill:
                if rng is None and kind == "BEGIN":
                    break  # deterministic: an episode is certainly running now
                if rng is not None:
                    time.sleep(rng.uniform(0.0, 0.05))  # anywhere, mid-write included
                    break
        else:
            pytest.fail(f"writer exited early: {proc.stderr.read()}")  # type: ignore[union-attr]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    for line in proc.stdout:  # acknowledgements already in the pipe still count
        kind, eid, *rest = line.split()
        if kind == "ACK":
            acked[eid] = int(rest[0])
        else:
            begun.append(eid)
    assert proc.returncode == -signal.SIGKILL
    return acked, begun


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["after_begin", "random-1", "random-2"])
def test_kill9_loses_nothing_acknowledged(tmp_path, mode):
    db = tmp_path / "t.db"
    rng = None if mode == "after_begin" else random.Random(mode)
    acked, begun = _run_and_kill(db, 0.1 if rng is None else 0.0, 4, rng)
    assert len(acked) >= 4
    with TraceStore(db) as store:
        assert store.integrity_check() == "ok"
        for eid, i in acked.items():
            ep = store.get_episode(eid)
            assert (ep.status, ep.final_return, ep.problem_id) == ("ok", float(i), f"p{i}")
            assert len(ep.turns) == TURNS
            for d, t in enumerate(ep.turns):
                expected = make_turn(d, t.parent_turn_id, 10 * i + d, n_tokens=TOKENS)
                assert t.actions == expected.actions and t.reward == expected.reward
        everything = {e.episode_id: e for e in store.iter_episodes(status=None)}
        # begin commits before it prints, so at most one episode is stored but never announced
        assert set(begun) <= set(everything) and len(set(everything) - set(begun)) <= 1
        running = [e for e in everything.values() if e.status == "running"]
        if mode == "after_begin":
            assert len(running) == 1 and running[0].episode_id == begun[-1]
        assert len(running) <= 1
        complete = {e.episode_id for e in store.iter_episodes()}
        assert complete >= set(acked)
        assert not complete & {e.episode_id for e in running}
        for e in everything.values():
            if e.status == "ok":  # ok only ever after all turns were committed
                assert len(e.turns) == TURNS
        assert store.mark_interrupted() == len(running)
        for e in running:
            got = store.get_episode(e.episode_id)
            assert (got.status, got.failure_reason) == ("failed", "interrupted")
            assert len(got.turns) < TURNS or got.turns[-1].turn_index == TURNS - 1
        assert {e.episode_id for e in store.iter_episodes()} == complete
