"""TraceStore: round-trips, tree structure, validation, schema versions, filters, stats."""

from __future__ import annotations

import math
import sqlite3
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collm_serve.traces import schema as schema_mod
from collm_serve.traces import store as store_mod
from collm_serve.traces.records import EpisodeRecord
from collm_serve.traces.store import (
    SCHEMA_VERSION,
    TraceSchemaError,
    TraceStore,
    TraceStoreError,
    pack_logprobs,
    pack_token_ids,
    parse_location,
    unpack_logprobs,
    unpack_token_ids,
)
from tests.traces.helpers import make_episode, make_turn, write_branching, write_linear


@pytest.fixture
def store(tmp_path):
    with TraceStore(tmp_path / "traces.db") as s:
        yield s


def assert_same(loaded: EpisodeRecord, expected: EpisodeRecord) -> None:
    assert loaded.finished_at is not None or expected.status == "running"
    expected.finished_at = loaded.finished_at
    assert loaded == expected  # dataclass equality: every field, turn and action


def test_branching_round_trip_is_exact(store, tmp_path):
    ep = write_branching(store)
    loaded = store.get_episode(ep.episode_id)
    assert_same(loaded, ep)
    # exact token ids and float32 log-probs, bit for bit
    for t_loaded, t in zip(loaded.turns, ep.turns, strict=True):
        for a_loaded, a in zip(t_loaded.actions, t.actions, strict=True):
            assert a_loaded.response_token_ids == a.response_token_ids
            assert a_loaded.prompt_token_ids == a.prompt_token_ids
            assert [struct.pack("<d", x) for x in a_loaded.logprobs] == [
                struct.pack("<d", x) for x in a.logprobs
            ]
            assert all(struct.unpack("<f", struct.pack("<f", x))[0] == x for x in a.logprobs)
    # and again from a fresh connection (nothing served from memory)
    with TraceStore(tmp_path / "traces.db", create=False) as again:
        assert again.get_episode(ep.episode_id) == loaded


def test_children_order_and_tree_shape(store):
    ep = store.get_episode(write_branching(store).episode_id)
    roots = ep.children(None)
    assert [t.branch_index for t in roots] == [0, 1]
    assert [t.turn_index for t in roots] == [0, 0]
    for root in roots:
        kids = ep.children(root.turn_id)
        assert [k.branch_index for k in kids] == [0, 1]
        assert all(k.turn_index == 1 and k.parent_turn_id == root.turn_id for k in kids)
        assert all(ep.children(k.turn_id) == [] for k in kids)
    # turns come back in write order (parents before children)
    assert [t.turn_id for t in ep.turns] == sorted(t.turn_id for t in ep.turns)
    assert ep.turns[0].action("main").agent == "main"


def test_store_pragmas(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert store.integrity_check() == "ok"


def _count(store, table):
    return store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_parent_validation_and_atomic_turns(store):
    a = write_linear(store, 2, None, status=None, problem_id="a")
    b = write_linear(store, 1, None, status=None, problem_id="b")
    turns, actions = _count(store, "turns"), _count(store, "actions")
    a_root = a.turns[0].turn_id
    with pytest.raises(ValueError, match="not a turn of episode"):  # parent of another episode
        store.append_turn(a.episode_id, make_turn(1, b.turns[0].turn_id, 7))
    with pytest.raises(ValueError, match="not a turn of episode"):  # no such turn
        store.append_turn(a.episode_id, make_turn(1, 10_000, 7))
    with pytest.raises(ValueError, match="turn_index"):  # depth must be the parent's + 1
        store.append_turn(a.episode_id, make_turn(2, a_root, 7, branch=1))
    with pytest.raises(ValueError, match="root turn"):
        store.append_turn(a.episode_id, make_turn(1, None, 7, branch=1))
    with pytest.raises(ValueError, match="branch_index 0 already used"):  # sibling clash
        store.append_turn(a.episode_id, make_turn(1, a_root, 7, branch=0))
    bad = make_turn(1, a_root, 7, branch=1)
    bad.actions[1].agent = "stranger"  # first action is valid: the whole turn must roll back
    with pytest.raises(ValueError, match="not one of the episode's agents"):
        store.append_turn(a.episode_id, bad)
    nan = make_turn(1, a_root, 7, branch=1)
    nan.reward = math.nan
    with pytest.raises(ValueError, match="finite"):
        store.append_turn(a.episode_id, nan)
    inf = make_turn(1, a_root, 7, branch=1)
    inf.actions[0].logprobs[-1] = -math.inf
    with pytest.raises(ValueError, match="log-prob"):
        store.append_turn(a.episode_id, inf)
    with pytest.raises(KeyError):
        store.append_turn("nope", make_turn(0, None, 1))
    assert (_count(store, "turns"), _count(store, "actions")) == (turns, actions)
    assert bad.turn_id is None
    # a valid sibling is fine
    ok = make_turn(1, a_root, 7, branch=1)
    assert store.append_turn(a.episode_id, ok) == ok.turn_id
    store.finish_episode(a.episode_id, "ok", 1.0)
    with pytest.raises(ValueError, match="only be appended while it is running"):
        store.append_turn(a.episode_id, make_turn(1, a_root, 8, branch=2))
    with pytest.raises(ValueError, match="already ok"):
        store.finish_episode(a.episode_id, "failed", None)
    with pytest.raises(ValueError, match="finish status"):
        store.finish_episode(b.episode_id, "running", None)


def test_begin_episode_ids_and_duplicates(store):
    ep = make_episode()
    eid = store.begin_episode(ep)
    assert len(eid) == 32 and ep.episode_id == eid and ep.created_at > 0
    assert store.get_episode(eid).status == "running"
    with pytest.raises(ValueError, match="cannot be inserted"):
        store.begin_episode(make_episode(episode_id=eid))
    with pytest.raises(KeyError, match="no episode"):
        store.get_episode("missing")


def _set_version(path, value):
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (value,))
    conn.commit()
    conn.close()


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "t.db"
    TraceStore(path).close()
    _set_version(path, str(SCHEMA_VERSION + 98))
    with pytest.raises(
        TraceSchemaError,
        match=rf"version {SCHEMA_VERSION + 98} is newer.*"
        rf"version {SCHEMA_VERSION}",
    ):
        TraceStore(path)


def test_older_schema_version_without_migration_is_refused(tmp_path):
    path = tmp_path / "t.db"
    TraceStore(path).close()
    _set_version(path, "0")
    with pytest.raises(TraceSchemaError, match="version 0 is older.*no migration"):
        TraceStore(path)


def test_older_schema_version_is_migrated(tmp_path, monkeypatch):
    path = tmp_path / "t.db"
    with TraceStore(path) as s:
        eid = write_linear(s, 1, 0.5).episode_id

    def v1_to_v2(conn):
        conn.execute("ALTER TABLE episodes ADD COLUMN note TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(schema_mod, "MIGRATIONS", {1: v1_to_v2})
    with TraceStore(path) as s:
        assert s.conn.execute("SELECT value FROM meta").fetchone()[0] == "2"
        assert s.conn.execute("SELECT note FROM episodes").fetchone()[0] == ""
        assert s.get_episode(eid).final_return == 0.5


def test_not_a_trace_store(tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE x (y)")
    conn.close()
    with pytest.raises(TraceSchemaError, match="not a CoLLM trace store"):
        TraceStore(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TraceStoreError, match="not a usable SQLite"):
        TraceStore(junk)
    with pytest.raises(FileNotFoundError):
        TraceStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_locations(tmp_path, monkeypatch):
    assert parse_location("sqlite:////abs/t.db") == "/abs/t.db"
    assert parse_location("sqlite:///rel/t.db") == "rel/t.db"
    assert parse_location("sqlite://") == ":memory:"
    assert parse_location(tmp_path / "x.db") == str(tmp_path / "x.db")
    for bad in ("postgresql://u@h/db", "s3://bucket/t.db"):
        with pytest.raises(ValueError, match="unsupported.*sqlite:///"):
            parse_location(bad)
    monkeypatch.chdir(tmp_path)
    with TraceStore("sqlite:///rel.db") as s:
        write_linear(s, 1, 1.0)
    assert (tmp_path / "rel.db").is_file()
    with TraceStore(":memory:") as s:
        ep = write_branching(s)
        assert s.get_episode(ep.episode_id).turns == ep.turns


def test_status_filters_and_resume_keys(store, monkeypatch):
    ok1 = write_linear(store, 2, 1.0, problem_id="p1", seed=1)
    ok2 = write_linear(store, 1, 0.0, problem_id="p2", seed=2, split="test")
    failed = write_linear(store, 1, None, status="failed", problem_id="p3", seed=3)
    running = write_linear(store, 1, None, status=None, problem_id="p4", seed=4)
    other = write_linear(store, 1, 2.0, task="writing", problem_id="w1", seed=5)

    def ids(**kw):
        return [e.episode_id for e in store.iter_episodes(**kw)]

    assert ids() == [ok1.episode_id, ok2.episode_id, other.episode_id]  # complete ones only
    assert ids(task="coding") == [ok1.episode_id, ok2.episode_id]
    assert ids(task="coding", split="test") == [ok2.episode_id]
    assert ids(status="failed") == [failed.episode_id]
    assert ids(status="running") == [running.episode_id]
    assert len(ids(status=None)) == 5
    assert ids(limit=2) == ids()[:2]
    assert ids(since=other.created_at) == [other.episode_id]
    with pytest.raises(ValueError, match="status"):
        ids(status="done")
    monkeypatch.setattr(store_mod, "_PAGE", 2)  # paging must not skip or repeat
    assert ids(status=None) == [e.episode_id for e in (ok1, ok2, failed, running, other)]
    assert ids(status=None, limit=3) == [e.episode_id for e in (ok1, ok2, failed)]

    assert store.completed_keys("coding", "train") == {("p1", 1)}
    assert store.completed_keys("coding", "test") == {("p2", 2)}
    assert store.mark_interrupted() == 1
    got = store.get_episode(running.episode_id)
    assert (got.status, got.failure_reason) == ("failed", "interrupted")
    assert store.mark_interrupted() == 0
    with pytest.raises(ValueError, match="already failed \\(interrupted\\)"):
        store.finish_episode(running.episode_id, "ok", 1.0)
    late = write_linear(store, 1, None, status=None, problem_id="p5")
    assert store.mark_interrupted(before=late.created_at) == 0
    assert store.get_episode(late.episode_id).status == "running"


def test_stats_numbers(store):
    write_branching(store, final_return=1.5, version=3)
    write_linear(store, 2, 0.5, version=4)
    write_linear(store, 1, None, status="failed", task="writing")
    write_linear(store, 1, None, status=None, task="writing")
    s = store.stats()
    assert s["schema_version"] == SCHEMA_VERSION
    assert s["episodes"] == {"running": 1, "ok": 2, "failed": 1}
    assert (s["turns"], s["actions"]) == (10, 20)
    assert s["by_task"] == [
        {"task": "coding", "ok": 2, "failed": 0, "running": 0, "turns": 8, "mean_return": 1.0},
        {"task": "writing", "ok": 0, "failed": 1, "running": 1, "turns": 2, "mean_return": None},
    ]
    expected = []
    for agent in ("helper", "main"):
        expected += [
            {
                "agent": agent,
                "adapter_name": agent,
                "adapter_version": 3,
                "episodes": 1,
                "actions": 6,
                "mean_return": 1.5,
            },
            {
                "agent": agent,
                "adapter_name": agent,
                "adapter_version": 4,
                "episodes": 1,
                "actions": 2,
                "mean_return": 0.5,
            },
        ]
    assert s["by_adapter"] == expected


def test_closed_store(tmp_path):
    s = TraceStore(tmp_path / "t.db")
    s.close()
    s.close()  # idempotent
    with pytest.raises(TraceStoreError, match="closed"):
        s.stats()


@given(
    ids=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50),
    lps=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=50),
    lps32=st.lists(st.floats(width=32, allow_nan=False), max_size=50),
)
def test_packing_round_trips_exactly(ids, lps, lps32):
    assert unpack_token_ids(pack_token_ids(ids)) == ids
    assert unpack_logprobs(pack_logprobs(lps)) == lps
    assert unpack_logprobs(pack_logprobs(lps32)) == lps32
    assert len(pack_token_ids(ids)) == 4 * len(ids)


def test_token_ids_must_be_int32():
    with pytest.raises(ValueError, match="int32"):
        pack_token_ids([2**31])
    with pytest.raises(ValueError, match="int32"):
        pack_token_ids([1.5])
