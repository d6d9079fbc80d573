"""The field table (codec.py) and SamplingRecord: one declaration per field, old files still open."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

from collm_serve.traces import codec
from collm_serve.traces.records import ActionRecord, SamplingRecord
from collm_serve.traces.store import TraceStore
from tests.traces.helpers import make_action, write_linear

# The version-1 DDL exactly as the code before the field table wrote it (frozen here on purpose:
# files created by that code must keep opening, so the generated schema must match it).
V1_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE episodes (
    episode_id TEXT PRIMARY KEY, task TEXT NOT NULL, split TEXT NOT NULL,
    problem_id TEXT NOT NULL, seed INTEGER NOT NULL, agents TEXT NOT NULL,
    group_size INTEGER NOT NULL, protocol TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
    failure_reason TEXT NOT NULL, final_return REAL, created_at REAL NOT NULL,
    finished_at REAL, metadata TEXT NOT NULL);
CREATE INDEX episodes_task_split ON episodes (task, split, status, problem_id, seed);
CREATE INDEX episodes_status_created ON episodes (status, created_at);
CREATE TABLE turns (
    turn_id INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE,
    parent_turn_id INTEGER REFERENCES turns (turn_id),
    turn_index INTEGER NOT NULL CHECK (turn_index >= 0),
    branch_index INTEGER NOT NULL CHECK (branch_index >= 0),
    reward REAL NOT NULL, feedback TEXT NOT NULL, done INTEGER NOT NULL, info TEXT NOT NULL);
CREATE INDEX turns_episode ON turns (episode_id, turn_id);
CREATE INDEX turns_parent ON turns (parent_turn_id);
CREATE UNIQUE INDEX turns_sibling ON turns (episode_id, ifnull(parent_turn_id, -1), branch_index);
CREATE TABLE actions (
    turn_id INTEGER NOT NULL REFERENCES turns (turn_id) ON DELETE CASCADE,
    agent_index INTEGER NOT NULL, agent TEXT NOT NULL, observation TEXT NOT NULL,
    prompt_token_ids BLOB NOT NULL, response_text TEXT NOT NULL,
    response_token_ids BLOB NOT NULL, logprobs BLOB NOT NULL, adapter_name TEXT NOT NULL,
    adapter_version INTEGER NOT NULL, adapter_sha256 TEXT NOT NULL, sampling TEXT NOT NULL,
    finish_reason TEXT NOT NULL, latency_ms REAL NOT NULL,
    PRIMARY KEY (turn_id, agent_index), UNIQUE (turn_id, agent),
    CHECK (length(logprobs) = 2 * length(response_token_ids)));
CREATE INDEX actions_adapter ON actions (agent, adapter_name, adapter_version);
INSERT INTO meta VALUES ('schema_version', '1');
"""
# what the orchestrator recorded before SamplingRecord: the request, plus its adapter pin
LEGACY_SAMPLING = {"max_tokens": 256, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 7,
                   "n": 2, "adapter_version": 3}


def _layout(conn: sqlite3.Connection) -> dict:
    return {
        t: conn.execute(f"PRAGMA table_info({t})").fetchall()
        + conn.execute(f"PRAGMA index_list({t})").fetchall()
        for t in ("meta", "episodes", "turns", "actions")
    }


def test_every_record_field_has_exactly_one_column():
    for table, (record, columns) in codec.TABLES.items():
        mapped = sorted(c.field for c in columns if c.field)
        want = sorted({f.name for f in dataclasses.fields(record)} - {"turns", "actions"})
        assert mapped == want, table
        assert len({c.name for c in columns}) == len(columns), table


def test_generated_schema_is_the_version1_file_format(tmp_path):
    old = sqlite3.connect(tmp_path / "old.db")
    old.executescript(V1_DDL)
    TraceStore(tmp_path / "new.db").close()
    new = sqlite3.connect(tmp_path / "new.db")
    assert _layout(new) == _layout(old)


def test_a_file_of_the_older_code_opens_and_its_dict_sampling_loads(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    conn.close()
    with TraceStore(path) as s:  # a v1 file: no migration, it is written to as it is
        ep = write_linear(s, 2, 1.0)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE actions SET sampling = ? WHERE agent = 'helper'",
                     (json.dumps(LEGACY_SAMPLING),))
        conn.execute("UPDATE actions SET sampling = ? WHERE agent = 'main'",
                     (json.dumps({"temperature": 0.5}),))  # hand-written, incomplete
    conn.close()
    with TraceStore(path, create=False) as s:
        got = s.get_episode(ep.episode_id)
    helper = got.turns[0].action("helper").sampling
    assert helper == SamplingRecord(temperature=0.7, top_p=0.9, top_k=0, max_tokens=256, seed=7, n=2)
    assert got.turns[0].action("main").sampling is None  # unknown: the trainer refuses it
    assert got.turns[1].actions[0].response_token_ids == ep.turns[1].actions[0].response_token_ids


def test_sampling_record_round_trips_and_refuses_bad_values():
    s = SamplingRecord(temperature=0.699999988079071, top_p=1.0, top_k=20, max_tokens=64,
                       min_tokens=3, seed=2**62, n=4, stop=["\n\n"])
    assert s.stop == ("\n\n",)
    assert SamplingRecord.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert SamplingRecord.from_json({}) is None
    with pytest.raises(ValueError, match="unknown key.*'temprature'"):
        SamplingRecord.from_json({**s.to_json(), "temprature": 1.0})
    with pytest.raises(ValueError, match="top_p"):
        SamplingRecord(temperature=0.7, top_p=0.0, top_k=0, max_tokens=8)
    with pytest.raises(ValueError, match="sampling.top_k must be an integer"):
        SamplingRecord(temperature=0.7, top_p=1.0, top_k=1.5, max_tokens=8)
    with pytest.raises(TypeError, match="SamplingRecord or None, got dict"):
        ActionRecord(**{**dataclasses.asdict(make_action("helper", 0)), "sampling": {"temperature": 1.0}})


def test_store_round_trips_sampling_and_none(tmp_path):
    with TraceStore(tmp_path / "t.db") as s:
        ep = write_linear(s, 1, 0.0)
        ep.turns[0].actions[0].sampling = None
        ep.episode_id = "copy"
        s.import_episode(ep)
        got = s.get_episode("copy").turns[0].actions
        assert got[0].sampling is None
        assert got[1].sampling == ep.turns[0].actions[1].sampling
        raw = s.conn.execute("SELECT sampling FROM actions ORDER BY rowid DESC LIMIT 2").fetchall()
    assert "{}" in {r["sampling"] for r in raw}  # None is stored as an empty object
