"""The field table of the trace records: ONE declaration per stored field, from which the SQL
columns (schema.py's CREATE TABLEs), the INSERTs and row readers (store.py) and the flat export
and its Arrow schema (export.py) are all derived.

A `Column` names a record field, its SQL column and type, and a `Codec` (record value <-> SQL
value <-> export value). `EPISODES`, `TURNS` and `ACTIONS` list the columns of the three tables
in on-disk order; `_check_covers` proves at import that each table maps exactly the fields of
its dataclass in records.py (plus the store's own keys), so a field added to a record without a
column (or the reverse) fails at import, not in a trace file. Rows are read by column name
(sqlite3.Row), never by position.

Pure functions without a connection, testable on their own; the store keeps transactions,
validation of the episode tree and the queries.

Any Python string is stored losslessly (issue 27, item 4). Text a model, a task or a test
produces may hold what UTF-8 cannot encode - lone surrogates (U+D800..U+DFFF, e.g. from a test's
error message or a `surrogateescape`-decoded byte) - and SQLite TEXT is UTF-8, so Python's
sqlite3 refuses such a string (UnicodeEncodeError) and the turn would be lost:
- JSON columns (feedback, info, observation, metadata, ...): `dumps` writes each lone surrogate
  as its JSON escape `\\udXXX`, which is valid JSON in valid UTF-8 and which `json.loads` turns
  back into the same lone surrogate. Every other character is written as itself.
- Plain text columns (response_text, failure_reason, ...): a string with a lone surrogate is
  stored as a BLOB of its UTF-8 bytes with the surrogates encoded as UTF-8 would encode any code
  point (Python's 'surrogatepass'); reading a BLOB from a text column decodes it the same way.
  Such a value is not TEXT to SQL (`WHERE x = ?`, `LIKE`), so keys the store queries on (ids,
  task, split, status) come from code, never from model text.
One string a JSON column cannot give back as it was: a high surrogate directly followed by a
low one reads back as the single character that pair encodes in UTF-16 (JSON has no way to
write the two apart; json.loads always joins them).
No lossy replacement ('replace', 'backslashreplace') is used: a trace must give back exactly the
text the model saw and wrote. NUL characters and lines of any length need nothing special:
sqlite3 binds text with its length, so "a\\x00b" comes back whole (SQL's own length() stops at
the NUL). One value is bounded only by SQLite's SQLITE_MAX_LENGTH (1e9 bytes by default); a
larger one fails that turn's write (sqlite3.DataError), never an earlier turn.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from collm_serve.traces.records import ActionRecord, EpisodeRecord, SamplingRecord, TurnRecord

# ---------------------------------------------------------------------------------------------
# packing helpers


def _pack(typecode: str, values: Sequence) -> bytes:
    """`values` as a little-endian array of `typecode` (the blobs' byte order on every host)."""
    a = array(typecode, values)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def _unpack(typecode: str, blob: bytes) -> list:
    a = array(typecode)
    a.frombytes(blob)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


def pack_token_ids(ids: Sequence[int]) -> bytes:
    """Token ids → little-endian int32 bytes; ValueError if an id is not an int32."""
    try:
        return _pack("i", ids)
    except (OverflowError, TypeError) as e:
        raise ValueError(f"token ids must be int32 integers ({e})") from e


def unpack_token_ids(blob: bytes) -> list[int]:
    return _unpack("i", blob)


def pack_logprobs(values: Sequence[float]) -> bytes:
    """Log-probs → little-endian float64 bytes (exact for any Python float / float32)."""
    return _pack("d", values)


def unpack_logprobs(blob: bytes) -> list[float]:
    return _unpack("d", blob)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(text: str) -> str:
    """JSON text with each lone surrogate as its `\\udXXX` escape (module doc): in `json.dumps`
    output with ensure_ascii=False a non-ASCII character can only sit inside a string literal,
    where the escape means the same code point."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def text_to_sql(value: Any, what: str = "") -> Any:
    """A plain text column's value: itself, or (a string with a lone surrogate) the BLOB of its
    'surrogatepass' UTF-8 bytes (module doc)."""
    if isinstance(value, str) and _SURROGATE.search(value):
        return value.encode("utf-8", "surrogatepass")
    return value


def text_from_sql(value: Any) -> Any:
    """The inverse of `text_to_sql`: a BLOB read from a text column is decoded back."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def dumps(value: Any, what: str) -> str:
    """`value` as JSON text, any string in it storable (module doc); ValueError naming `what`
    if it is not JSON-serialisable."""
    # allow_nan=False: NaN/Infinity are not JSON, and exports must stay readable by `datasets`
    try:
        return _escape_surrogates(json.dumps(value, allow_nan=False, ensure_ascii=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable ({e})") from e


def finite(x: float, what: str) -> float:
    """`x` as a float; ValueError naming `what` if it is NaN or infinite."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{what} is {x}; it must be finite")
    return x


# ---------------------------------------------------------------------------------------------
# codecs: record value <-> SQL value <-> export value


def _same(v: Any, what: str = "") -> Any:
    return v


def _nullable(fn: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda v, what: None if v is None else fn(v, what)


@dataclass(frozen=True)
class Codec:
    """How one field's value is stored and exported.

    to_sql(value, what) / from_sql(sql): record <-> SQLite (`what` names the field in errors).
    to_export(value) / from_export(value): record <-> a flat export row (JSON / Arrow).
    arrow: the Arrow type name of the export column (resolved in export.arrow_schema).
    """

    to_sql: Callable[[Any, str], Any] = _same
    from_sql: Callable[[Any], Any] = lambda v: v
    to_export: Callable[[Any], Any] = lambda v: v
    from_export: Callable[[Any], Any] = lambda v: v
    arrow: str = "string"


def chat(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Chat messages as exported: {"role", "content"} only, both strings (a fixed Arrow struct)."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def completion(text: str) -> list[dict[str, str]]:
    """A response as exported: one assistant message (TRL's conversational completion)."""
    return [{"role": "assistant", "content": text}]


def completion_text(messages: Sequence[Mapping[str, Any]]) -> str:
    if len(messages) != 1 or messages[0].get("role") != "assistant":
        raise ValueError(f"completion must be one assistant message, got {messages!r}")
    return messages[0]["content"]


def export_json(value: Any) -> str:
    return _escape_surrogates(json.dumps(value, ensure_ascii=False, allow_nan=False))


def _sampling_json(s: SamplingRecord | None) -> dict[str, Any]:
    return {} if s is None else s.to_json()


TEXT = Codec(to_sql=text_to_sql, from_sql=text_from_sql)  # any str, losslessly
INT = Codec(to_sql=lambda v, what: int(v), arrow="int64")
ID = Codec(arrow="int64")  # ids the store assigns (turn_id, parent_turn_id): None or int
REAL = Codec(to_sql=lambda v, what: float(v), arrow="float64")
NULLABLE_REAL = Codec(arrow="float64")
FINITE = Codec(to_sql=_nullable(finite), arrow="float64")
CREATED = Codec(to_sql=lambda v, what: float(v or time.time()), arrow="float64")
BOOL = Codec(to_sql=lambda v, what: int(bool(v)), from_sql=bool, to_export=bool, arrow="bool")
JSON = Codec(to_sql=dumps, from_sql=json.loads, to_export=export_json, from_export=json.loads)
NAMES = Codec(  # a list of names: JSON text in SQLite, a list of strings in exports
    to_sql=lambda v, what: dumps(list(v), what), from_sql=json.loads, to_export=list,
    from_export=list, arrow="list<string>",
)
CHAT = Codec(  # chat messages: JSON text in SQLite, a list of {role, content} in exports
    to_sql=dumps, from_sql=json.loads, to_export=chat,
    from_export=lambda v: [dict(m) for m in v], arrow="messages",
)
COMPLETION = Codec(to_sql=text_to_sql, from_sql=text_from_sql, to_export=completion,
                   from_export=completion_text, arrow="messages")
TOKEN_IDS = Codec(
    to_sql=lambda v, what: pack_token_ids(v), from_sql=unpack_token_ids, to_export=list,
    from_export=list, arrow="list<int32>",
)
LOGPROBS = Codec(
    to_sql=lambda v, what: pack_logprobs(v), from_sql=unpack_logprobs, to_export=list,
    from_export=list, arrow="list<float64>",
)
SAMPLING = Codec(  # a SamplingRecord: a JSON object in SQLite and exports ({} = not recorded)
    to_sql=lambda v, what: dumps(_sampling_json(v), what),
    from_sql=lambda v: SamplingRecord.from_json(json.loads(v)),
    to_export=lambda v: export_json(_sampling_json(v)),
    from_export=lambda v: SamplingRecord.from_json(json.loads(v)),
)


# ---------------------------------------------------------------------------------------------
# the field table


@dataclass(frozen=True)
class Column:
    """One stored field. field: the record attribute (None: a key the store supplies, such as
    a row's parent id); name: the SQL column; ddl: its SQL type and constraints; export: the
    flat export's column name ("" = not exported: the episode / turn row already carries it);
    insert: False for ids SQLite assigns."""

    field: str | None
    name: str
    ddl: str
    codec: Codec = TEXT
    export: str | None = None  # None = the SQL name
    insert: bool = True

    @property
    def export_name(self) -> str:
        return self.name if self.export is None else self.export


EPISODES: tuple[Column, ...] = (
    Column("episode_id", "episode_id", "TEXT PRIMARY KEY"),
    Column("task", "task", "TEXT NOT NULL"),
    Column("split", "split", "TEXT NOT NULL"),
    Column("problem_id", "problem_id", "TEXT NOT NULL"),
    Column("seed", "seed", "INTEGER NOT NULL", INT),
    Column("agents", "agents", "TEXT NOT NULL", NAMES),  # JSON list[str]
    Column("group_size", "group_size", "INTEGER NOT NULL", INT),
    Column("protocol", "protocol", "TEXT NOT NULL"),
    Column("status", "status", "TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed'))"),
    Column("failure_reason", "failure_reason", "TEXT NOT NULL"),
    Column("final_return", "final_return", "REAL", FINITE),
    Column("created_at", "created_at", "REAL NOT NULL", CREATED),
    Column("finished_at", "finished_at", "REAL", NULLABLE_REAL),
    Column("metadata", "metadata", "TEXT NOT NULL", JSON, export="episode_metadata"),
)
TURNS: tuple[Column, ...] = (
    Column("turn_id", "turn_id", "INTEGER PRIMARY KEY AUTOINCREMENT", ID, insert=False),
    Column(None, "episode_id", "TEXT NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE",
           export=""),
    Column("parent_turn_id", "parent_turn_id", "INTEGER REFERENCES turns (turn_id)", ID),
    Column("turn_index", "turn_index", "INTEGER NOT NULL CHECK (turn_index >= 0)", INT),
    Column("branch_index", "branch_index", "INTEGER NOT NULL CHECK (branch_index >= 0)", INT),
    Column("reward", "reward", "REAL NOT NULL", FINITE),
    Column("feedback", "feedback", "TEXT NOT NULL", JSON),  # agent -> text
    Column("done", "done", "INTEGER NOT NULL", BOOL),
    Column("info", "info", "TEXT NOT NULL", JSON, export="turn_info"),
)
ACTIONS: tuple[Column, ...] = (
    Column(None, "turn_id", "INTEGER NOT NULL REFERENCES turns (turn_id) ON DELETE CASCADE",
           export=""),
    Column(None, "agent_index", "INTEGER NOT NULL", INT),  # position in TurnRecord.actions
    Column("agent", "agent", "TEXT NOT NULL"),
    Column("observation", "observation", "TEXT NOT NULL", CHAT, export="prompt"),
    Column("prompt_token_ids", "prompt_token_ids", "BLOB NOT NULL", TOKEN_IDS),  # LE int32
    Column("response_text", "response_text", "TEXT NOT NULL", COMPLETION, export="completion"),
    Column("response_token_ids", "response_token_ids", "BLOB NOT NULL", TOKEN_IDS),  # LE int32
    Column("logprobs", "logprobs", "BLOB NOT NULL", LOGPROBS),  # LE float64
    Column("adapter_name", "adapter_name", "TEXT NOT NULL"),
    Column("adapter_version", "adapter_version", "INTEGER NOT NULL", INT),
    Column("adapter_sha256", "adapter_sha256", "TEXT NOT NULL"),
    Column("sampling", "sampling", "TEXT NOT NULL", SAMPLING),  # JSON object
    Column("finish_reason", "finish_reason", "TEXT NOT NULL"),
    Column("latency_ms", "latency_ms", "REAL NOT NULL", REAL),
)
# record fields that are child rows, not columns
_CHILDREN = {EpisodeRecord: {"turns"}, TurnRecord: {"actions"}, ActionRecord: set()}
TABLES = {"episodes": (EpisodeRecord, EPISODES), "turns": (TurnRecord, TURNS),
          "actions": (ActionRecord, ACTIONS)}


def _check_covers() -> None:
    """Each table maps every field of its record exactly once (and nothing else)."""
    for table, (record, columns) in TABLES.items():
        mapped = [c.field for c in columns if c.field is not None]
        want = {f.name for f in fields(record)} - _CHILDREN[record]
        if len(mapped) != len(set(mapped)) or set(mapped) != want:
            raise RuntimeError(
                f"trace table {table} maps fields {sorted(mapped)} but {record.__name__} has "
                f"{sorted(want)}: add or remove the Column in collm_serve/traces/codec.py"
            )


_check_covers()


def names(columns: Sequence[Column], *, prefix: str = "") -> str:
    """`a, b, c` (or `t.a AS a, ...` with a table prefix): a SELECT list read back by name."""
    return ", ".join(f"{prefix}{c.name} AS {c.name}" if prefix else c.name for c in columns)


def insert_sql(table: str) -> str:
    """`INSERT INTO table (cols) VALUES (:cols)`: named parameters, filled by `record_values`."""
    cols = [c.name for c in TABLES[table][1] if c.insert]
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"


def record_values(table: str, record: Any, what: str, **keys: Any) -> dict[str, Any]:
    """The inserted columns of `record` by name; `keys` supplies the store's keys and overrides
    (a remapped parent_turn_id). ValueError naming `what` for a value that cannot be stored."""
    out = {}
    for c in TABLES[table][1]:
        if not c.insert:
            continue
        if c.name in keys:
            out[c.name] = keys[c.name]
        elif c.field is None:
            raise TypeError(f"{table}.{c.name} is the store's key; pass it to record_values")
        else:
            out[c.name] = c.codec.to_sql(getattr(record, c.field), f"{what} {c.field}")
    return out


def record_from_row(table: str, row: Mapping[str, Any], **children: Any) -> Any:
    """A row (sqlite3.Row or dict, read by column name) → its record; `children` fills the
    child lists (turns=[] / actions=[])."""
    record, columns = TABLES[table]
    return record(
        **{c.field: c.codec.from_sql(row[c.name]) for c in columns if c.field is not None},
        **children,
    )
