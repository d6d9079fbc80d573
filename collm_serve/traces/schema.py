"""The trace store's on-disk schema: SQL DDL, schema version, migrations and the version check.

Separate from store.py so the file format lives in one place that can be read (and reviewed for
a version bump) without the connection / query code; store.py calls `prepare_schema` once per
open. The record tables' columns come from the field table in codec.py (EPISODES, TURNS,
ACTIONS); this module adds the meta table, multi-column constraints and indexes. A change of a
column there or of the DDL here is a change of the file format: bump SCHEMA_VERSION and add a
MIGRATIONS entry from the previous version. Rows are read as sqlite3.Row (by column name).

Storage layout (schema version 1):
- meta(key, value): `schema_version`.
- episodes: one row per EpisodeRecord; `agents` and `metadata` as JSON text.
- turns: one row per joint action; `turn_id` INTEGER PRIMARY KEY AUTOINCREMENT (never reused),
  `parent_turn_id` → turns; a unique index on (episode, parent, branch_index) keeps a Monte
  Carlo group's branch indices distinct; `feedback` and `info` as JSON text.
- actions: one row per (turn, agent) in the order of `TurnRecord.actions`; observation and
  sampling (a SamplingRecord, `{}` when not recorded) as JSON text. Token ids are packed little-endian int32 BLOBs (4 bytes a token);
  log-probs are packed little-endian float64 BLOBs (8 bytes a token). float64 holds every
  Python float — and so every float32 an engine returned — exactly, so log-probs read back
  bit-identical to what was written. A CHECK ties the two blob lengths together.
The packing and the field ↔ column mapping are in codec.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from collm_serve.traces.codec import TABLES

SCHEMA_VERSION = 1

# from-version → function upgrading a connection's schema to from-version + 1 (runs inside the
# open transaction). Empty while there is only version 1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}


class TraceStoreError(Exception):
    """A trace database that cannot be used as asked (not a trace store, unreadable, ...)."""


class TraceSchemaError(TraceStoreError):
    """The file's schema version is not one this code can read."""


# what the field table (codec.py) cannot say about a table: its multi-column constraints
_CONSTRAINTS = {
    "actions": (
        "PRIMARY KEY (turn_id, agent_index)",
        "UNIQUE (turn_id, agent)",
        "CHECK (length(logprobs) = 2 * length(response_token_ids))",
    ),
}
_META = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_INDEXES = """
CREATE INDEX episodes_task_split ON episodes (task, split, status, problem_id, seed);
CREATE INDEX episodes_status_created ON episodes (status, created_at);
CREATE INDEX turns_episode ON turns (episode_id, turn_id);
CREATE INDEX turns_parent ON turns (parent_turn_id);
CREATE UNIQUE INDEX turns_sibling ON turns (episode_id, ifnull(parent_turn_id, -1), branch_index);
CREATE INDEX actions_adapter ON actions (agent, adapter_name, adapter_version);
"""


def create_table_sql(table: str) -> str:
    """The CREATE TABLE of one record table, from its columns in codec.py's field table."""
    lines = [f"    {c.name} {c.ddl}" for c in TABLES[table][1]]
    lines += [f"    {x}" for x in _CONSTRAINTS.get(table, ())]
    return f"CREATE TABLE {table} (\n" + ",\n".join(lines) + "\n)"


def schema_sql() -> str:
    """The whole schema script of a new file (version SCHEMA_VERSION)."""
    return _META + "".join(create_table_sql(t) + ";\n" for t in TABLES) + _INDEXES


def read_version(conn: sqlite3.Connection, path: str) -> int | None:
    """None for an empty database; raises for a non-empty database that is not ours."""
    tables = {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None
    if "meta" not in tables:
        raise TraceSchemaError(f"{path}: not a CoLLM trace store (no meta table)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row["value"])
    except (TypeError, ValueError) as e:
        raise TraceSchemaError(f"{path}: meta has no valid schema_version") from e


def prepare_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty database or migrate an older one to SCHEMA_VERSION.

    `path` only names the file in error messages. Raises TraceSchemaError for a database that is
    not a trace store, is newer than this code, or is older without a migration path.
    """
    version = read_version(conn, path)
    if version == SCHEMA_VERSION:
        return
    check_version(version, path)
    # create or migrate under a write lock, re-reading: another process may have won the race
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = read_version(conn, path)
        check_version(version, path)
        if version is None:
            for stmt in _split_sql(schema_sql()):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        else:
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),)
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def check_version(version: int | None, path: str) -> None:
    """Raise TraceSchemaError unless `version` is ours, absent (empty file) or migratable."""
    if version is None or version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise TraceSchemaError(
            f"{path}: trace schema version {version} is newer than this code's "
            f"version {SCHEMA_VERSION}; upgrade collm"
        )
    missing = [v for v in range(version, SCHEMA_VERSION) if v not in MIGRATIONS]
    if missing:
        raise TraceSchemaError(
            f"{path}: trace schema version {version} is older than this code's "
            f"version {SCHEMA_VERSION} and has no migration from version {missing[0]}"
        )


def _split_sql(script: str) -> list[str]:
    """The schema script as single statements (executescript would COMMIT our transaction)."""
    lines = [ln.split("--", 1)[0] for ln in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
