"""`collm-traces`: inspect and export a trace database.

    collm-traces stats DB [--json]
    collm-traces list DB [--task T] [--split S] [--status ok] [--since TIME] [--limit N] [--json]
    collm-traces show DB EPISODE_ID [--agent NAME]
    collm-traces export DB --format jsonl|parquet --out PATH [--task T] [--split S] [--status ok]
    collm-traces --version

Bad inputs (missing file, unknown episode, newer schema, ...) exit 1 with one line on stderr.
Imports stay light: rich and pyarrow are loaded by the command that needs them.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    """Map the errors a user can cause to a one-line `Error: ...` and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from collm_serve.traces.store import TraceStoreError

        try:
            return fn(*args, **kwargs)
        except KeyError as e:  # str(KeyError) adds quotes; use the message itself
            raise click.ClickException(_line(e.args[0] if e.args else e)) from e
        except (TraceStoreError, ValueError, OSError, ImportError, sqlite3.Error) as e:
            raise click.ClickException(_line(e)) from e

    return wrapper  # type: ignore[return-value]


def _line(msg: object) -> str:
    return " ".join(str(msg).split())


def _open(db: str) -> Any:
    from collm_serve.traces.store import TraceStore

    return TraceStore(db, create=False)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="collm", prog_name="collm-traces")
def cli() -> None:
    """Inspect and export CoLLM trace databases (SQLite files or sqlite:/// URLs)."""


def _json_out(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, allow_nan=False))


def _when(epoch: float | None) -> str:
    import time

    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _since(value: str | None) -> float | None:
    """--since: epoch seconds, or an ISO date/time (local time unless it names a zone)."""
    if value is None:
        return None
    from datetime import datetime

    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter(f"{value!r}: give epoch seconds or an ISO time such as 2025-01-31T12:00",
                                 param_hint="--since") from None


@cli.command()
@click.argument("db")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@_one_line_errors
def stats(db: str, as_json: bool) -> None:
    """Episodes by status, turns, and mean return by task and by adapter version."""
    from rich.console import Console
    from rich.table import Table

    with _open(db) as store:
        s = store.stats()
    if as_json:
        _json_out({"db": db, **s})
        return
    console = Console(highlight=False)
    eps = s["episodes"]
    console.print(
        f"{db}: {sum(eps.values())} episodes "
        f"(ok {eps['ok']}, failed {eps['failed']}, running {eps['running']}), "
        f"{s['turns']} turns, {s['actions']} actions, schema v{s['schema_version']}",
        markup=False,
        soft_wrap=True,
    )
    t = Table(title="by task (mean return over ok episodes)")
    for col in ("task", "ok", "failed", "running", "turns", "mean return"):
        t.add_column(col, justify="left" if col == "task" else "right")
    for r in s["by_task"]:
        t.add_row(
            r["task"],
            *(str(r[k]) for k in ("ok", "failed", "running", "turns")),
            _fmt(r["mean_return"]),
        )
    console.print(t)
    t = Table(title="by agent / adapter version (ok episodes)")
    for col in ("agent", "adapter", "version", "episodes", "actions", "mean return"):
        t.add_column(col, justify="left" if col in ("agent", "adapter") else "right")
    for r in s["by_adapter"]:
        t.add_row(
            r["agent"],
            r["adapter_name"] or "(base)",
            str(r["adapter_version"]),
            str(r["episodes"]),
            str(r["actions"]),
            _fmt(r["mean_return"]),
        )
    console.print(t)


@cli.command("list")
@click.argument("db")
@click.option("--task", default=None, help="Only this task.")
@click.option("--split", default=None, help="Only this split.")
@click.option("--status", type=click.Choice(["ok", "failed", "running", "all"]), default="all", show_default=True)
@click.option("--since", default=None, help="Only episodes created at or after this time (epoch or ISO).")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Newest N episodes (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="Print the episodes as a JSON list.")
@_one_line_errors
def list_(db: str, task: str | None, split: str | None, status: str, since: str | None, limit: int,
          as_json: bool) -> None:
    """Episodes, newest first: id, task, split, problem, status, return, turns, created time."""
    from rich.console import Console
    from rich.table import Table

    with _open(db) as store:
        heads = store.list_episodes(task=task, split=split, status=None if status == "all" else status,
                                    since=_since(since), limit=limit or None)
    if as_json:
        _json_out(heads)
        return
    t = Table(title=f"{len(heads)} episode(s), newest first" + (f" (at most {limit})" if limit else ""))
    for col in ("episode", "task", "split", "problem", "status", "return", "turns", "created"):
        t.add_column(col, justify="right" if col in ("return", "turns") else "left", overflow="fold")
    for h in heads:
        status_text = h["status"] + (f": {h['failure_reason']}" if h["failure_reason"] else "")
        t.add_row(h["episode_id"], h["task"], h["split"], h["problem_id"], status_text,
                  _fmt(h["final_return"]), str(h["turns"]), _when(h["created_at"]))
    Console(highlight=False, width=200).print(t)


@cli.command()
@click.argument("db")
@click.argument("episode_id")
@click.option("--agent", default=None, help="Show only this agent's conversation.")
@_one_line_errors
def show(db: str, episode_id: str, agent: str | None) -> None:
    """One episode: per agent, every turn's observation, response, reward and feedback."""
    from rich.console import Console
    from rich.rule import Rule

    with _open(db) as store:
        ep = store.get_episode(episode_id)
    if agent is not None and agent not in ep.agents:
        raise click.ClickException(f"episode {episode_id} has no agent {agent!r} ({ep.agents})")
    out = Console(highlight=False)

    def say(text: str = "", style: str | None = None) -> None:
        out.print(text, markup=False, emoji=False, style=style, soft_wrap=True)

    say(f"episode {ep.episode_id}", style="bold")
    say(
        f"task {ep.task}  split {ep.split}  problem {ep.problem_id}  seed {ep.seed}  "
        f"protocol {ep.protocol or '-'}  group size {ep.group_size}  agents {', '.join(ep.agents)}"
    )
    status = ep.status + (f" ({ep.failure_reason})" if ep.failure_reason else "")
    say(f"status {status}  final return {_fmt(ep.final_return)}  turns {len(ep.turns)}")
    if ep.metadata:
        say(f"metadata {ep.metadata}")
    for name in [agent] if agent else ep.agents:
        out.print(Rule(f"agent {name}"))
        for t in ep.turns:
            acts = [a for a in t.actions if a.agent == name]
            if not acts:
                continue
            a = acts[0]
            adapter = f"{a.adapter_name}@v{a.adapter_version}" if a.adapter_name else "base"
            if a.adapter_sha256:
                adapter += f" sha256 {a.adapter_sha256[:12]}"
            say(
                f"turn {t.turn_index}  branch {t.branch_index}  turn_id {t.turn_id}  "
                f"parent {t.parent_turn_id if t.parent_turn_id is not None else '-'}  "
                f"adapter {adapter}  reward {_fmt(t.reward)}  done {'yes' if t.done else 'no'}",
                style="bold cyan",
            )
            for m in a.observation:
                say(f"  [{m.get('role', '?')}] {m.get('content', '')}")
            say(
                f"  [response, {len(a.response_token_ids)} tokens, "
                f"{a.finish_reason or '-'}, {a.latency_ms:.0f} ms] {a.response_text}",
                style="green",
            )
            if t.feedback.get(name):
                say(f"  [feedback] {t.feedback[name]}", style="yellow")
            if t.info:
                say(f"  [info] {t.info}", style="dim")


@cli.command()
@click.argument("db")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), required=True)
@click.option("--out", "out_path", required=True, help="File to write (replaced atomically).")
@click.option("--task", default=None, help="Only this task.")
@click.option("--split", default=None, help="Only this split.")
@click.option(
    "--status",
    type=click.Choice(["ok", "failed", "running", "all"]),
    default="ok",
    show_default=True,
    help="Episode status to export ('ok' = complete episodes).",
)
@_one_line_errors
def export(
    db: str, fmt: str, out_path: str, task: str | None, split: str | None, status: str
) -> None:
    """Flat rows, one per action, readable by datasets.load_dataset("json" | "parquet"):
    `prompt`/`completion` chat messages (TRL's conversational format), `reward`, per-token
    behaviour `logprobs` and `logprob_sum`, `adapter_version`; see README "Trace export".

    Missing parent folders of --out are created. A filter that matches nothing still writes
    the (empty) file and exits 0, with a warning on stderr listing what the store holds.
    """
    from collm_serve.traces.export import export_jsonl, export_parquet

    write = export_jsonl if fmt == "jsonl" else export_parquet
    with _open(db) as store:
        wanted = None if status == "all" else status
        n = write(store, out_path, task=task, split=split, status=wanted)
        held = store.stats()["by_task"] if n == 0 else []
    click.echo(f"wrote {n} rows to {out_path}")
    if n == 0:
        asked = ", ".join(f"{k}={v!r}" for k, v in (("task", task), ("split", split), ("status", status)) if v)
        has = "; ".join(f"{r['task']}: {r['ok']} ok, {r['failed']} failed, {r['running']} running" for r in held)
        click.echo(f"warning: no episode matches {asked}; the store holds {has or 'no episodes'} "
                   "(change --task/--split/--status; `collm-traces stats DB` lists them)", err=True)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
