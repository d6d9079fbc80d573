"""TraceStore: the embedded SQLite store for episodes → turns → actions (see records.py).

Durability model (docs/design.md, "Traces"): WAL journal, ONE transaction per turn, and
`synchronous=FULL` by default, so every call that returned has been fsynced — a crashed
collector loses at most the turn in flight and never corrupts the file. With WAL, FULL costs one
fsync of the WAL per commit; a turn is seconds of generation, so the fsync is noise
(https://www.sqlite.org/pragma.html#pragma_synchronous: NORMAL in WAL mode survives a process
crash but may lose the last commits on power loss). An episode is "complete" only once
`finish_episode(..., "ok")` commits; until then it stays `running`, and `mark_interrupted()`
turns what a dead collector left behind into `failed` / "interrupted".

This module holds connections, transactions, validation of the episode tree and the queries.
The storage layout, schema version and migrations are in schema.py; the field table (which
record field is which column, token-id / log-prob BLOB packing, JSON text) is in codec.py, and
every INSERT and row reader here is derived from it. Rows come back as sqlite3.Row and are read
by column name. The names other code imports from here (SCHEMA_VERSION, TraceSchemaError, the
packing helpers) are re-exported.

Threads: one connection guarded by a re-entrant lock, so one store can be shared by executor
threads; iterators release the lock between pages. Several processes may open the same file
(WAL: readers never block the writer; writers wait up to `busy_timeout_s`).
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collm_serve.traces.codec import (
    ACTIONS,
    EPISODES,
    TURNS,
    finite,
    insert_sql,
    names,
    pack_logprobs,
    pack_token_ids,
    record_from_row,
    record_values,
    text_from_sql,
    text_to_sql,
    unpack_logprobs,
    unpack_token_ids,
)
from collm_serve.traces.records import (
    EPISODE_FAILED,
    EPISODE_OK,
    EPISODE_RUNNING,
    EPISODE_STATUSES,
    EpisodeRecord,
    TurnRecord,
)
from collm_serve.traces.schema import (
    SCHEMA_VERSION,
    TraceSchemaError,
    TraceStoreError,
    prepare_schema,
)

__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_URLS",
    "EpisodeFilter",
    "TraceSchemaError",
    "TraceStore",
    "TraceStoreError",
    "pack_logprobs",
    "pack_token_ids",
    "parse_location",
    "unpack_logprobs",
    "unpack_token_ids",
]

SUPPORTED_URLS = "a file path, 'sqlite:///relative/path', 'sqlite:////absolute/path' or ':memory:'"
_INTERRUPTED = "interrupted"
_PAGE = 64  # episodes loaded per query by iter_episodes
# the episode head `list_episodes` returns (plus "turns", the count)
_LIST_KEYS = ("episode_id", "task", "split", "problem_id", "seed", "status", "failure_reason",
              "final_return", "created_at", "finished_at")


@dataclass(frozen=True)
class EpisodeFilter:
    """Which episodes a reader returns: the keyword arguments `iter_episodes` and
    `list_episodes` take, defined once here (only `status`'s default differs between them).
    None = any; `since`: created at or after this epoch time; `limit`: at most that many."""

    task: str | None = None
    status: str | None = EPISODE_OK
    split: str | None = None
    since: float | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in EPISODE_STATUSES:
            raise ValueError(f"status {self.status!r}; use one of {EPISODE_STATUSES} or None")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit {self.limit} must be >= 0")

    def where(self) -> tuple[list[str], list[Any]]:
        """WHERE terms and their arguments; `limit` is not one (each reader applies it: iter_episodes
        by pages)."""
        where, args = [], []
        for col, val in (("task", self.task), ("status", self.status), ("split", self.split)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if self.since is not None:
            where.append("created_at >= ?")
            args.append(float(self.since))
        return where, args


def parse_location(location: str | os.PathLike[str]) -> str:
    """A path or `sqlite:///` URL → the path sqlite3 opens (SQLAlchemy's URL convention)."""
    loc = os.fspath(location)
    if loc.startswith("sqlite://"):
        rest = loc[len("sqlite://") :]
        if rest in ("", "/"):
            return ":memory:"
        if not rest.startswith("/"):
            raise ValueError(f"bad SQLite URL {loc!r}; use {SUPPORTED_URLS}")
        return rest[1:]  # sqlite:///rel → rel, sqlite:////abs → /abs
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", loc)
    if m:
        raise ValueError(
            f"unsupported trace store URL scheme {m.group(1)!r} in {loc!r}; supported: "
            f"{SUPPORTED_URLS}"
        )
    if not loc:
        raise ValueError(f"empty trace store location; use {SUPPORTED_URLS}")
    return loc


# ---------------------------------------------------------------------------------------------


class TraceStore:
    """Episodes, turns and actions in one SQLite file. See the module docstring."""

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        create: bool = True,
        synchronous: str = "FULL",
        busy_timeout_s: float = 30.0,
    ) -> None:
        """Open (and by default create) a store.

        location: a path, `sqlite:///path` or ':memory:'. create=False raises
        FileNotFoundError when the file does not exist (readers, the CLI).
        synchronous: "FULL" (default: every acknowledged commit is on disk) or "NORMAL"
        (WAL: survives a process crash, may lose the last commits on power loss).
        """
        self.path = parse_location(location)
        sync = synchronous.upper()
        if sync not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r}; use 'FULL' or 'NORMAL'")
        memory = self.path == ":memory:"
        if not memory and not create and not Path(self.path).is_file():
            raise FileNotFoundError(f"{self.path}: no such trace database")
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise TraceStoreError(f"{self.path}: cannot open ({e})") from e
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            prepare_schema(conn, self.path)
            mode = conn.execute("PRAGMA journal_mode").fetchone()["journal_mode"]
            if not memory and str(mode).lower() != "wal":  # switching writes: only when needed
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()["journal_mode"]
                if str(mode).lower() != "wal":
                    raise TraceStoreError(f"{self.path}: cannot switch to WAL (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {sync}")
        except sqlite3.DatabaseError as e:
            conn.close()
            raise TraceStoreError(f"{self.path}: not a usable SQLite trace database ({e})") from e
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise TraceStoreError(f"{self.path}: store is closed")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn` in one IMMEDIATE transaction (all or nothing)."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT (busy, disk full) leaves it open
                    conn.execute("ROLLBACK")
                raise
            return out

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------

    def begin_episode(self, episode: EpisodeRecord) -> str:
        """Insert `episode` as running; fills in episode_id (uuid4 hex) and created_at if unset.

        The record's turns are not written here (use append_turn); it must have none.
        """
        if episode.turns:
            raise ValueError(
                "begin_episode writes the episode row only; append its turns with append_turn "
                "(or write a finished episode with import_episode)"
            )
        episode.episode_id = episode.episode_id or uuid.uuid4().hex
        episode.created_at = episode.created_at or time.time()
        episode.status, episode.failure_reason = EPISODE_RUNNING, ""
        episode.final_return, episode.finished_at = None, None
        self._write(lambda c: self._insert_episode(c, episode))
        return episode.episode_id

    def append_turn(self, episode_id: str, turn: TurnRecord) -> int:
        """Write one turn and all its actions in ONE transaction; returns and sets turn.turn_id.

        The episode must be running. `parent_turn_id` must name a turn of the same episode,
        `turn_index` must be the parent's + 1 (0 at the root), and siblings need distinct
        branch indices.
        """

        def tx(c: sqlite3.Connection) -> int:
            ep = self._episode_head(c, episode_id)
            if ep["status"] != EPISODE_RUNNING:
                raise ValueError(
                    f"episode {episode_id!r} is {ep['status']}; turns can only be appended "
                    "while it is running"
                )
            agents = set(json.loads(ep["agents"]))
            return self._insert_turn(c, episode_id, agents, turn, turn.parent_turn_id)

        turn_id = self._write(tx)
        turn.turn_id = turn_id
        return turn_id

    def finish_episode(
        self, episode_id: str, status: str, final_return: float | None, reason: str = ""
    ) -> None:
        """Mark a running episode ok or failed; only then does an ok episode count as complete."""
        if status not in (EPISODE_OK, EPISODE_FAILED):
            raise ValueError(f"finish status {status!r}; use 'ok' or 'failed'")
        ret = None if final_return is None else finite(final_return, "final_return")

        def tx(c: sqlite3.Connection) -> None:
            ep = self._episode_head(c, episode_id)
            if ep["status"] != EPISODE_RUNNING:
                why = text_from_sql(ep["failure_reason"])
                raise ValueError(
                    f"episode {episode_id!r} is already {ep['status']}" + (f" ({why})" if why else "")
                )
            c.execute(
                "UPDATE episodes SET status = ?, final_return = ?, failure_reason = ?, "
                "finished_at = ? WHERE episode_id = ?",
                (status, ret, text_to_sql(reason), time.time(), episode_id),
            )

        self._write(tx)

    def mark_interrupted(self, before: float | None = None) -> int:
        """Running episodes (optionally only those created before `before`, epoch seconds)
        become failed / "interrupted"; returns how many. Call it when a collector resumes."""
        sql = "UPDATE episodes SET status = ?, failure_reason = ?, finished_at = ? WHERE status = ?"
        args: list[Any] = [EPISODE_FAILED, _INTERRUPTED, time.time(), EPISODE_RUNNING]
        if before is not None:
            sql += " AND created_at < ?"
            args.append(before)
        return self._write(lambda c: c.execute(sql, args).rowcount)

    def import_episode(self, episode: EpisodeRecord, *, skip_existing: bool = False) -> bool:
        """Write a whole episode (row, turns, actions) as-is in one transaction.

        Turn ids are newly assigned (parent links are remapped) and set on the record. Returns
        False when skip_existing and the episode id is already stored.
        """
        if not episode.episode_id:
            raise ValueError("import_episode needs an episode_id")
        if episode.status not in EPISODE_STATUSES:
            raise ValueError(f"episode status {episode.status!r}; use one of {EPISODE_STATUSES}")
        turns = sorted(episode.turns, key=lambda t: (t.turn_id is None, t.turn_id or 0))

        def tx(c: sqlite3.Connection) -> tuple[list[int], dict[int | None, int | None]] | None:
            row = c.execute(
                "SELECT 1 FROM episodes WHERE episode_id = ?", (episode.episode_id,)
            ).fetchone()
            if row is not None and skip_existing:
                return None
            self._insert_episode(c, episode)
            new_ids: dict[int | None, int | None] = {None: None}
            assigned = []
            for t in turns:
                if t.parent_turn_id not in new_ids:
                    raise ValueError(
                        f"episode {episode.episode_id!r}: turn {t.turn_id} has parent "
                        f"{t.parent_turn_id}, which is not an earlier turn of the episode"
                    )
                new_id = self._insert_turn(
                    c, episode.episode_id, set(episode.agents), t, new_ids[t.parent_turn_id]
                )
                if t.turn_id is not None:
                    new_ids[t.turn_id] = new_id
                assigned.append(new_id)
            return assigned, new_ids

        done = self._write(tx)
        if done is None:
            return False
        assigned, new_ids = done
        for t, new_id in zip(turns, assigned, strict=True):  # touch the records only once committed
            t.parent_turn_id = new_ids[t.parent_turn_id]
            t.turn_id = new_id
        return True

    def _insert_episode(self, c: sqlite3.Connection, e: EpisodeRecord) -> None:
        if e.group_size < 1:
            raise ValueError(f"episode group_size {e.group_size}; it must be >= 1")
        if not e.agents or len(set(e.agents)) != len(e.agents):
            raise ValueError(f"episode agents {e.agents!r} must be non-empty and distinct")
        values = record_values("episodes", e, f"episode {e.episode_id!r}")
        try:
            c.execute(insert_sql("episodes"), values)
        except sqlite3.IntegrityError as err:
            raise ValueError(f"episode {e.episode_id!r} cannot be inserted ({err})") from err

    def _insert_turn(
        self,
        c: sqlite3.Connection,
        episode_id: str,
        agents: set[str],
        t: TurnRecord,
        parent: int | None,
    ) -> int:
        """Insert one turn + its actions inside the caller's transaction under `parent`
        (append_turn: t.parent_turn_id; import_episode: the remapped parent)."""
        where = f"episode {episode_id!r} turn {t.turn_index}"
        if not t.actions:
            raise ValueError(f"{where} has no actions")
        if parent is None:
            if t.turn_index != 0:
                raise ValueError(f"{where}: a root turn (no parent) must have turn_index 0")
        else:
            row = c.execute(
                "SELECT episode_id, turn_index FROM turns WHERE turn_id = ?", (parent,)
            ).fetchone()
            if row is None or row["episode_id"] != episode_id:
                raise ValueError(
                    f"{where}: parent_turn_id {parent} is not a turn of episode {episode_id!r}"
                )
            if t.turn_index != row["turn_index"] + 1:
                raise ValueError(
                    f"{where}: turn_index must be the parent's ({row['turn_index']}) + 1"
                )
        if t.branch_index < 0:
            raise ValueError(f"{where}: branch_index {t.branch_index} must be >= 0")
        values = record_values("turns", t, where, episode_id=episode_id, parent_turn_id=parent)
        try:
            cur = c.execute(insert_sql("turns"), values)
        except sqlite3.IntegrityError as err:
            raise ValueError(
                f"{where}: branch_index {t.branch_index} already used by a sibling ({err})"
            ) from err
        turn_id = int(cur.lastrowid)  # type: ignore[arg-type]
        rows = []
        for i, a in enumerate(t.actions):
            what = f"{where} agent {a.agent!r}"
            if a.agent not in agents:
                raise ValueError(f"{what}: not one of the episode's agents {sorted(agents)}")
            if len(a.logprobs) != len(a.response_token_ids):
                raise ValueError(f"{what}: logprobs and response tokens differ in length")
            if not all(math.isfinite(x) for x in a.logprobs):
                raise ValueError(
                    f"{what}: non-finite behaviour log-prob; a sampled token must have "
                    "probability > 0 under the sampling distribution (engine bug?)"
                )
            rows.append(record_values("actions", a, what, turn_id=turn_id, agent_index=i))
        try:
            c.executemany(insert_sql("actions"), rows)
        except sqlite3.IntegrityError as err:
            raise ValueError(f"{where}: one action per agent ({err})") from err
        return turn_id

    @staticmethod
    def _episode_head(c: sqlite3.Connection, episode_id: str) -> sqlite3.Row:
        """status, failure_reason and agents (JSON) of an episode; KeyError if unknown."""
        row = c.execute(
            "SELECT status, failure_reason, agents FROM episodes WHERE episode_id = ?",
            (episode_id,),
        ).fetchone()
        if row is None:
            raise KeyError(f"no episode {episode_id!r}")
        return row

    # -- reads ----------------------------------------------------------------------------------

    def get_episode(self, episode_id: str) -> EpisodeRecord:
        """The episode with its turns (in write order) and actions; KeyError if unknown."""
        with self._lock:
            row = self.conn.execute(
                f"SELECT {names(EPISODES)} FROM episodes WHERE episode_id = ?", (episode_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no episode {episode_id!r} in {self.path}")
            return self._load(self.conn, [row])[0]

    def iter_episodes(self, **filters: Any) -> Iterator[EpisodeRecord]:
        """Episodes in write order; `filters` are `EpisodeFilter`'s (task, status, split, since,
        limit). Defaults to complete (ok) episodes; status=None for all.

        The lock is released between pages, so the caller may use the store (or other threads
        may write) while iterating.
        """
        f = EpisodeFilter(**filters)
        where, args = f.where()
        where.insert(0, "rowid > ?")
        sql = (
            f"SELECT rowid AS page_key, {names(EPISODES)} FROM episodes "
            f"WHERE {' AND '.join(where)} "
            "ORDER BY rowid LIMIT ?"
        )
        last, left = 0, f.limit
        while left is None or left > 0:
            page = _PAGE if left is None else min(_PAGE, left)
            with self._lock:
                rows = self.conn.execute(sql, [last, *args, page]).fetchall()
                episodes = self._load(self.conn, rows)
            if not rows:
                return
            last = rows[-1]["page_key"]
            if left is not None:
                left -= len(rows)
            yield from episodes
            if len(rows) < page:
                return

    def list_episodes(self, status: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Episode heads, newest first, without turns (what `collm-traces list` shows): episode_id,
        task, split, problem_id, seed, status, failure_reason, final_return, created_at,
        finished_at, turns. Filters as `iter_episodes`, but status=None (all) by default."""
        f = EpisodeFilter(status=status, **filters)
        where, args = f.where()
        head = [c for c in EPISODES if c.name in _LIST_KEYS]
        sql = (
            f"SELECT {names(head, prefix='e.')}, "
            "(SELECT COUNT(*) FROM turns t WHERE t.episode_id = e.episode_id) AS turns "
            f"FROM episodes e {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY e.rowid DESC"
            + ("" if f.limit is None else " LIMIT ?")
        )
        with self._lock:
            rows = self.conn.execute(sql, [*args] + ([] if f.limit is None else [f.limit])).fetchall()
        return [{**dict(r), **{c.name: c.codec.from_sql(r[c.name]) for c in head}} for r in rows]

    def completed_keys(self, task: str, split: str) -> set[tuple[str, int]]:
        """(problem_id, seed) of the ok episodes of (task, split): what `collect --resume` skips."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT problem_id, seed FROM episodes WHERE task = ? AND split = ? AND status = ?",
                (task, split, EPISODE_OK),
            ).fetchall()
        return {(r["problem_id"], int(r["seed"])) for r in rows}

    def stats(self) -> dict[str, Any]:
        """Counts and mean returns (over ok episodes with a final return).

        {"schema_version", "episodes": {status: n}, "turns", "actions",
         "by_task": [{task, ok, failed, running, turns, mean_return}],
         "by_adapter": [{agent, adapter_name, adapter_version, episodes, actions, mean_return}]}
        by_adapter counts ok episodes in which the agent acted at least once under that version.
        """
        with self._lock:
            c = self.conn
            by_status = dict.fromkeys(EPISODE_STATUSES, 0)
            by_status.update(
                (r["status"], r["n"])
                for r in c.execute("SELECT status, COUNT(*) AS n FROM episodes GROUP BY status")
            )
            n_turns = c.execute("SELECT COUNT(*) AS n FROM turns").fetchone()["n"]
            n_actions = c.execute("SELECT COUNT(*) AS n FROM actions").fetchone()["n"]
            by_task = [
                dict(r)
                for r in c.execute(
                    """
                    SELECT e.task AS task,
                           SUM(e.status = 'ok') AS ok, SUM(e.status = 'failed') AS failed,
                           SUM(e.status = 'running') AS running,
                           SUM((SELECT COUNT(*) FROM turns t WHERE t.episode_id = e.episode_id))
                               AS turns,
                           AVG(CASE WHEN e.status = 'ok' THEN e.final_return END) AS mean_return
                    FROM episodes e GROUP BY e.task ORDER BY e.task
                    """
                )
            ]
            by_adapter = [
                dict(r)
                for r in c.execute(
                    """
                    SELECT u.agent AS agent, u.adapter_name AS adapter_name,
                           u.adapter_version AS adapter_version, COUNT(*) AS episodes,
                           SUM(u.n) AS actions, AVG(e.final_return) AS mean_return
                    FROM (SELECT t.episode_id, a.agent, a.adapter_name, a.adapter_version,
                                 COUNT(*) AS n
                          FROM actions a JOIN turns t ON t.turn_id = a.turn_id
                          GROUP BY 1, 2, 3, 4) u
                    JOIN episodes e ON e.episode_id = u.episode_id
                    WHERE e.status = 'ok'
                    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
                    """
                )
            ]
        return {
            "schema_version": SCHEMA_VERSION,
            "episodes": by_status,
            "turns": n_turns,
            "actions": n_actions,
            "by_task": by_task,
            "by_adapter": by_adapter,
        }

    def integrity_check(self) -> str:
        """ "ok", or SQLite's list of problems (PRAGMA integrity_check + foreign_key_check)."""
        with self._lock:
            problems = [r["integrity_check"] for r in self.conn.execute("PRAGMA integrity_check")]
            fk = [dict(r) for r in self.conn.execute("PRAGMA foreign_key_check")]
        if problems == ["ok"] and not fk:
            return "ok"
        return "; ".join([p for p in problems if p != "ok"] + [f"foreign key: {r}" for r in fk])

    # -- row → record ---------------------------------------------------------------------------

    @staticmethod
    def _load(c: sqlite3.Connection, episode_rows: Sequence[sqlite3.Row]) -> list[EpisodeRecord]:
        """Episode rows (EPISODES columns, by name) → their records with turns and actions (two
        queries for all)."""
        if not episode_rows:
            return []
        episodes = {r["episode_id"]: record_from_row("episodes", r) for r in episode_rows}
        marks = ", ".join("?" * len(episodes))
        turns: dict[int, tuple[str, TurnRecord]] = {}
        for r in c.execute(
            f"SELECT {names(TURNS)} FROM turns WHERE episode_id IN ({marks}) ORDER BY turn_id",
            list(episodes),
        ):
            turns[r["turn_id"]] = (r["episode_id"], record_from_row("turns", r, actions=[]))
        for r in c.execute(
            f"SELECT {names(ACTIONS, prefix='a.')} FROM actions a "
            f"JOIN turns t ON t.turn_id = a.turn_id WHERE t.episode_id IN ({marks}) "
            "ORDER BY a.turn_id, a.agent_index",
            list(episodes),
        ):
            turns[r["turn_id"]][1].actions.append(record_from_row("actions", r))
        for eid, t in turns.values():
            episodes[eid].turns.append(t)
        return list(episodes.values())
