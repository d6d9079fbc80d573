"""Export traces as flat rows that `datasets.load_dataset("json" | "parquet")` reads as-is.

Row shape: ONE ROW PER ACTION (agent × turn), each carrying its episode's and turn's columns,
in the order of `COLUMNS`: the stored fields of codec.py's field table (one declaration per
field: its export name and its export codec live there), plus the derived `logprob_sum`. Flat rows with a fixed schema are what Arrow-based readers want: no
free-form nesting to infer, and every file of a sharded export has the same columns and types.
- `prompt` and `completion` are chat messages, lists of {"role", "content"}: TRL's
  "conversational prompt-completion" format (SFTTrainer, GRPOTrainer, ... read these column
  names) and verl's default `prompt_key`. `prompt` is what the agent was given (its own
  history, the agent's server-side system prompt not included: `prompt_token_ids` are the exact
  tokens); `completion` is one assistant message, the response text.
- Rewards: `reward` is the turn's joint reward (shared by all agents), `final_return` the
  episode's return.
- Behaviour log-probs: `logprobs` holds one float per response token (float64: the exact values
  the store holds) under the sampling distribution of the policy `adapter_version` names;
  `logprob_sum` is their sum, log π_behaviour(completion | prompt) of the whole macro action.
- Token ids (`prompt_token_ids`, `response_token_ids`) are lists of ints.
- Free-form dicts (`feedback`, `turn_info`, `episode_metadata`) are JSON strings: their keys
  vary by task, and inferring a struct type from them makes shards disagree. `sampling` is the
  action's SamplingRecord as a JSON string too (`{}` = not recorded).
  `feedback` is the whole turn's {agent: text}.
- An episode without turns (e.g. failed at its first generation) is one row whose turn and
  action columns are null, so `import_jsonl` restores it too.
Rows of an episode are contiguous and in write order; `import_jsonl` relies on that.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collm_serve.traces.codec import (
    ACTIONS,
    EPISODES,
    TURNS,
    Column,
    chat,
    completion,
    export_json,
)
from collm_serve.traces.records import ActionRecord, EpisodeRecord, TurnRecord
from collm_serve.traces.store import TraceStore

__all__ = ["COLUMNS", "arrow_schema", "chat", "completion", "episode_rows", "export_jsonl",
           "export_parquet", "import_jsonl", "rows_to_episodes"]


def _exported(columns: tuple[Column, ...]) -> tuple[Column, ...]:
    return tuple(c for c in columns if c.export_name)


# the export's columns: codec.py's field table, in table order, under their export names;
# `logprob_sum` (derived, not stored) follows `logprobs`
_EPISODE, _TURN, _ACTION = _exported(EPISODES), _exported(TURNS), _exported(ACTIONS)
LOGPROB_SUM = "logprob_sum"
EPISODE_COLUMNS = tuple(c.export_name for c in _EPISODE)
TURN_COLUMNS = tuple(c.export_name for c in _TURN)
ACTION_COLUMNS = tuple(
    n for c in _ACTION for n in ((c.export_name, LOGPROB_SUM) if c.name == "logprobs" else (c.export_name,))
)
COLUMNS = EPISODE_COLUMNS + TURN_COLUMNS + ACTION_COLUMNS


def _values(columns: tuple[Column, ...], record: Any, **keys: Any) -> dict[str, Any]:
    """A record's export columns by name (`keys`: the store's keys, e.g. agent_index)."""
    return {
        c.export_name: keys[c.name] if c.field is None else c.codec.to_export(getattr(record, c.field))
        for c in columns
    }


def _fields(columns: tuple[Column, ...], row: dict[str, Any]) -> dict[str, Any]:
    """An export row's values of a record's fields, by field name (the inverse of `_values`)."""
    return {c.field: c.codec.from_export(row[c.export_name]) for c in columns if c.field is not None}


def episode_rows(ep: EpisodeRecord) -> Iterator[dict[str, Any]]:
    """The flat rows of one episode (see the module docstring)."""
    head = _values(_EPISODE, ep)
    if not ep.turns:
        yield head | dict.fromkeys(TURN_COLUMNS + ACTION_COLUMNS)
        return
    for t in ep.turns:
        turn = _values(_TURN, t)
        for i, a in enumerate(t.actions):
            action = _values(_ACTION, a, agent_index=i) | {LOGPROB_SUM: math.fsum(a.logprobs)}
            yield head | turn | {c: action[c] for c in ACTION_COLUMNS}  # in COLUMNS order


@contextmanager
def _atomic_output(out_path: str | os.PathLike[str]) -> Iterator[str]:
    """Yields a temporary path beside `out_path` (its missing parent folders created), renamed
    to `out_path` on success and removed on failure, so a reader never sees half a file."""
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the output file's path, e.g. {out / 'traces.jsonl'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{os.fspath(out)}.tmp"
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_jsonl(store: TraceStore, out_path: str | os.PathLike[str], **filters: Any) -> int:
    """Write the episodes `store.iter_episodes(**filters)` yields as JSON lines; returns rows.

    Missing parent folders are created; written to `out_path + ".tmp"` and renamed.
    """
    n = 0
    with _atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for ep in store.iter_episodes(**filters):
            for row in episode_rows(ep):
                f.write(export_json(row))
                f.write("\n")
                n += 1
    return n


def arrow_schema() -> Any:
    """The pyarrow schema of the Parquet export, from the field table's codecs (int32 token ids,
    float64 log-probs, chat messages as lists of {role, content})."""
    import pyarrow as pa

    s = pa.string()
    types = {
        "string": s,
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "list<string>": pa.list_(s),
        "list<int32>": pa.list_(pa.int32()),
        "list<float64>": pa.list_(pa.float64()),
        "messages": pa.list_(pa.struct([("role", s), ("content", s)])),
    }
    by_name = {c.export_name: types[c.codec.arrow] for c in _EPISODE + _TURN + _ACTION}
    by_name[LOGPROB_SUM] = pa.float64()
    return pa.schema([(c, by_name[c]) for c in COLUMNS])


def export_parquet(
    store: TraceStore,
    out_path: str | os.PathLike[str],
    *,
    row_group_rows: int = 4096,
    **filters: Any,
) -> int:
    """Same rows as export_jsonl, as one Parquet file (streamed in row groups); returns rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            "export_parquet needs pyarrow (pip install pyarrow); export_jsonl does not"
        ) from e
    schema = arrow_schema()
    n = 0
    buf: list[dict[str, Any]] = []
    with _atomic_output(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for ep in store.iter_episodes(**filters):
            buf.extend(episode_rows(ep))
            if len(buf) >= row_group_rows:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                n += len(buf)
                buf = []
        if buf or n == 0:
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
            n += len(buf)
    return n


def rows_to_episodes(rows: Iterable[dict[str, Any]]) -> Iterator[EpisodeRecord]:
    """Inverse of `episode_rows` over a stream whose episodes are contiguous."""
    current: EpisodeRecord | None = None
    turns: dict[int, TurnRecord] = {}
    seen: set[str] = set()
    for line_no, row in enumerate(rows, 1):
        row = _upgrade(row)
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"row {line_no}: missing columns {missing}")
        eid = row["episode_id"]
        if current is None or eid != current.episode_id:
            if eid in seen:
                raise ValueError(f"row {line_no}: rows of episode {eid!r} are not contiguous")
            if current is not None:
                yield current
            seen.add(eid)
            turns = {}
            current = _record(line_no, EpisodeRecord, _EPISODE, row)
        tid = row["turn_id"]
        if tid is None:
            continue
        turn = turns.get(tid)
        if turn is None:
            turn = turns[tid] = _record(line_no, TurnRecord, _TURN, row, actions=[])
            current.turns.append(turn)
        if row["agent_index"] != len(turn.actions):
            raise ValueError(
                f"row {line_no}: action {row['agent_index']} of turn {tid} out of order"
            )
        turn.actions.append(_record(line_no, ActionRecord, _ACTION, row))
    if current is not None:
        yield current


def _record(line_no: int, cls: type, columns: tuple[Column, ...], row: dict[str, Any], **kw: Any) -> Any:
    """`cls` from the row's values of `columns`; a bad value is a ValueError naming the row."""
    try:
        return cls(**_fields(columns, row), **kw)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"row {line_no}: {e}") from e


def _upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """A row of an older export (JSON-string `observation`, plain `response_text`, no
    `logprob_sum`) in the current shape."""
    if "prompt" in row or "observation" not in row:
        return row
    row = dict(row)
    obs, text = row.pop("observation"), row.pop("response_text", None)
    row["prompt"] = None if obs is None else json.loads(obs)
    row["completion"] = None if text is None else completion(text)
    row.setdefault("logprob_sum", None if row.get("logprobs") is None else math.fsum(row["logprobs"]))
    return row


def import_jsonl(
    store: TraceStore, path: str | os.PathLike[str], *, skip_existing: bool = False
) -> int:
    """Load an `export_jsonl` file into `store`; returns the number of episodes written.

    One transaction per episode: an error stops the import after the episodes already written
    (rerun with skip_existing=True). Turn ids are reassigned; parent links follow them.
    """

    def rows() -> Iterator[dict[str, Any]]:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_no}: not JSON ({e})") from e

    return sum(
        store.import_episode(ep, skip_existing=skip_existing) for ep in rows_to_episodes(rows())
    )
