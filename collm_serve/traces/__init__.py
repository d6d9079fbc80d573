"""Traces: episode → turns → actions records (records.py), their SQLite store (store.py; its
file format in schema.py, the field table every column, INSERT, row reader and export column
derives from in codec.py), flat JSONL / Parquet export
and import (export.py) and the `collm-traces` CLI (cli.py).

The trainer reads traces only through this package. Importing it is cheap (stdlib only).
"""

from collm_serve.traces.records import (
    EPISODE_FAILED,
    EPISODE_OK,
    EPISODE_RUNNING,
    EPISODE_STATUSES,
    ActionRecord,
    EpisodeRecord,
    SamplingRecord,
    TurnRecord,
)
from collm_serve.traces.schema import SCHEMA_VERSION, TraceSchemaError, TraceStoreError
from collm_serve.traces.store import TraceStore

__all__ = [
    "EPISODE_FAILED",
    "EPISODE_OK",
    "EPISODE_RUNNING",
    "EPISODE_STATUSES",
    "SCHEMA_VERSION",
    "ActionRecord",
    "EpisodeRecord",
    "SamplingRecord",
    "TraceSchemaError",
    "TraceStore",
    "TraceStoreError",
    "TurnRecord",
]
