"""`collm-train`: CoLLM-CC / CoLLM-DC / Monte Carlo updates from traces, pushed to live agents.

    collm-train --algo cc --traces runs/traces.db --team team.yaml --push
    collm-train online --algo cc --team team.yaml --iterations 50 --episodes-per-iteration 16
    collm-train online --async ...   # collection overlaps the updates (collm_train/online_async.py)
    collm-train plot runs/ --out curves.png
    collm-train config --algo cc --preset paper --dump   # the effective TrainConfig as YAML
    collm-train config --algo cc --preset paper --task housebuild   # what the paper ran on it

Every TrainConfig field is a flag (`--lr`, `--clip-eps none`, `--critic-on-actor/--no-critic-on-actor`),
generated from the config model: names, types, choices and help come from its fields and their
docstrings, so a new field is a new flag with nothing to copy. Precedence: flag > `--config`
file > preset > field default.

Everything that can fail without a model is checked before one loads (so a mistake costs a
second, not a model load and a training run): the config, the traces (an SQLite trace store,
non-empty, groups fit the algorithm), `--resume`, the trackers, and with `--push` / `online`
the agents (reachable, the team's agents, the same base model, and willing to load adapters
from `--out`). Each problem is one or two lines naming the fix; no tracebacks.

`--out` defaults to the agents' default adapter root, `$COLLM_HOME/adapters`: agents only load
adapters from below their `adapter_root`, so the defaults of both sides work together.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

import click

from collm_train.config import PRESETS, TrainConfig
from collm_train.paper import COMMON, PAPER_TASKS, paper_values

TRAIN_FIELDS = tuple(TrainConfig.model_fields)
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


class CliError(click.ClickException):
    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


# -- TrainConfig fields as flags (one source) --------------------------------------------------


class _Nullable(click.ParamType):
    """A field that may be None: `none` (or `null`) on the command line."""

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = f"{inner.name}|none"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.lower() in ("none", "null"):
            return None
        return self.inner.convert(value, param, ctx)


class _Csv(click.ParamType):
    name = "a,b,..."

    def convert(self, value, param, ctx):
        return value if isinstance(value, tuple) else tuple(v.strip() for v in str(value).split(",") if v.strip())


class _Devices(click.ParamType):
    """One device for all (`cuda:0`) or one per agent (`helper=cuda:0,main=cuda:1`)."""

    name = "device|agent=device,..."

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or "=" not in value:
            return value
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
            self.fail(f"{value!r}: write one device (cuda:0) or agent=device pairs (helper=cuda:0,main=cuda:1)",
                      param, ctx)
        return {a.strip(): d.strip() for a, d in pairs}


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_bool) for a TrainConfig field's annotation."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = list(typing.get_args(annotation)) if union else [annotation]
    nullable = type(None) in args
    args = [a for a in args if a is not type(None)]
    if len(args) == 2 and str in args and any(typing.get_origin(a) is dict for a in args):
        return _Devices(), False
    (inner,) = args
    if inner is bool:
        return None, True
    if typing.get_origin(inner) is typing.Literal:
        t: click.ParamType = click.Choice([str(v) for v in typing.get_args(inner)])
    elif typing.get_origin(inner) is tuple:
        t = _Csv()
    else:
        t = {int: click.INT, float: click.FLOAT, str: click.STRING}[inner]
    return (_Nullable(t) if nullable else t), False


_PER_TASK = {k for fam in PAPER_TASKS.values() for vals in fam.values() for k in vals} | set(COMMON)


def _field_help(name: str, field) -> str:
    text = " ".join((field.description or "").split())
    task = "; --preset paper --task T: what the paper ran on T" if name in _PER_TASK else ""
    if name in PRESETS["paper"]:
        default = ", ".join(f"{p}: {PRESETS[p][name]}" for p in PRESETS)
        return f"{text} [default by --preset: {default}{task}]"
    default = field.default if not isinstance(field.default, tuple) else ",".join(field.default)
    return f"{text} [default: {default}{task}]"


def train_config_options(fn):
    """One flag per TrainConfig field (default None: unset flags leave the file / preset values)."""
    for name, field in reversed(list(TrainConfig.model_fields.items())):
        flag = "--" + name.replace("_", "-")
        kind, is_bool = _click_type(field.annotation)
        if is_bool:
            fn = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=_field_help(name, field))(fn)
        else:
            fn = click.option(flag, name, type=kind, default=None, help=_field_help(name, field))(fn)
    return fn


def _train_config(config_path: str | None, flags: dict[str, Any]) -> TrainConfig:
    """flags > --config file > preset > field default; every problem at once, a flag's blamed on it."""
    from pydantic import ValidationError

    from collm_serve.config_errors import flag_names, format_validation_error, read_yaml_mapping

    data = read_yaml_mapping(config_path, "TrainConfig", error=CliError) if config_path else {}
    given = {k: v for k, v in flags.items() if k in TRAIN_FIELDS and v is not None}
    data.update(given)
    try:
        return TrainConfig(**data)
    except ValidationError as e:
        source = f"--config {config_path}" if config_path else "train config"
        raise CliError(format_validation_error(source, e, TrainConfig, flags=flag_names(list(given)))) from None


def _check_task(cfg: TrainConfig, team, team_path) -> None:
    """--task (or the config file's task) must be the team's: a preset for another task is a
    mistake. The collector's settings the config records (K, sampling) that the team does not
    use are warned about: the traces, not the config, say how actions were sampled."""
    if cfg.task is not None and cfg.task != team.task:
        raise CliError(f"--task {cfg.task} but the team in {team_path} plays {team.task!r}; "
                       f"pass --task {team.task} (or leave --task out)")
    for line in preset_vs_team(cfg, team):
        click.echo(f"warning: {line} (the team in {team_path}; docs/paper-fidelity.md, Per-task settings)", err=True)


def preset_vs_team(cfg: TrainConfig, team) -> list[str]:
    """Where the team's group_size / sampling differ from the config's num_generations /
    temperature / top_p / top_k / max_new_tokens (those set, e.g. by --preset paper --task)."""
    out = []
    if cfg.num_generations is not None and team.group_size != cfg.num_generations:
        out.append(f"num_generations {cfg.num_generations} but group_size {team.group_size}")
    pairs = (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("max_new_tokens", "max_tokens"))
    for name, agent in team.agents.items():
        diff = [f"{ours} {getattr(cfg, ours)} but {theirs} {getattr(agent.sampling, theirs)}"
                for ours, theirs in pairs
                if getattr(cfg, ours) is not None and getattr(cfg, ours) != getattr(agent.sampling, theirs)]
        if diff:
            out.append(f"agent {name} samples differently: " + ", ".join(diff))
    return out


def _common(fn=None, *, team_required: bool = True):
    if fn is None:
        return lambda f: _common(f, team_required=team_required)
    opts = [
        click.option("--team", "team_path", type=click.Path(exists=True, dir_okay=False), required=team_required,
                     help="team YAML: agents, addresses, task"),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                     help="adapters/<agent>/v<N>/ are written here; must be inside the agents' adapter_root "
                          "[default: $COLLM_HOME/adapters, the agents' default adapter_root]"),
        click.option("--model", default=DEFAULT_MODEL, show_default=True,
                     help="base model the agents serve (embedded alias or local folder)"),
        click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default="runs", show_default=True),
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="TrainConfig YAML (flags override it; `collm-train config --dump` writes one)"),
        click.option("--resume", default=None,
                     help="run name to resume (its checkpoint and metrics), or `latest` (this task and algo)"),
        click.option("--tracker", "trackers", multiple=True, type=click.Choice(["wandb", "mlflow"]),
                     help="also log to Weights & Biases / MLflow (needs the package; repeatable)"),
        click.option("--progress/--no-progress", default=None,
                     help="per-minibatch progress bar [default: on a terminal]"),
    ]
    fn = train_config_options(fn)  # listed after the options above in --help
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


# -- checks that run before any model loads ----------------------------------------------------


def _load_team(team_path):
    from collm_serve.config import ConfigError
    from collm_serve.team import load_team_config

    try:
        return load_team_config(team_path)
    except ConfigError as e:
        raise CliError(str(e)) from None


def _refuse_small_groups(algo, team=None, episodes=None) -> None:
    """K >= 2 for group baselines, checked on the team / the traces BEFORE any model loads."""
    from collm_train.data import UnusableTraceError, check_team_group_size, check_traces

    try:
        if episodes is not None:
            check_traces(algo, episodes, list(team.agents))
        else:
            check_team_group_size(algo, team.group_size)
    except UnusableTraceError as e:  # groups too small, an action without its sampling
        raise CliError(str(e)) from None


SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_trace_file(traces: str, team, team_path: str) -> None:
    """An existing --traces file must be an SQLite trace store (a JSONL export is not one)."""
    from collm_serve.traces.store import parse_location

    path = Path(parse_location(traces))
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC or not head:
        return
    text_like = head.lstrip()[:1] in (b"{", b"[") or path.suffix in (".jsonl", ".json")
    what = "a JSON/JSONL file" if text_like else "not an SQLite file"
    team_db = Path(parse_location(team.traces))
    hint = (f"--traces {team.traces} (the team's traces in {team_path})" if team_db.is_file() and team_db != path
            else "the SQLite database `collm-serve collect` wrote (the team's `traces:`)")
    raise CliError(f"--traces {traces} is {what}, not a trace store (SQLite); pass {hint}; an exported JSONL "
                   "file must be loaded into a store first (collm_serve.traces.export.import_jsonl)")


def _load_episodes(traces: str, team, team_path: str) -> list:
    from collm_serve.traces import TraceStore
    from collm_serve.traces.store import TraceStoreError

    _check_trace_file(traces, team, team_path)
    try:
        with TraceStore(traces, create=False) as store:
            episodes = list(store.iter_episodes(task=team.task, status="ok"))
            held = store.stats()["by_task"] if not episodes else []
    except (TraceStoreError, FileNotFoundError) as e:
        raise CliError(f"--traces {traces}: {e}") from None
    if not episodes:
        has = "; ".join(f"{r['task']}: {r['ok']} ok, {r['failed']} failed" for r in held) or "no episodes"
        raise CliError(f"--traces {traces}: no complete episodes of task {team.task!r} (it holds {has}); "
                       f"collect some first (collm-serve collect --team {team_path}) or pass the right --traces")
    return episodes


def _check_trackers(trackers) -> None:
    from collm_train.trackers import TrackerUnavailable, check_trackers

    try:
        check_trackers(trackers)
    except TrackerUnavailable as e:
        raise CliError(str(e)) from None


def _resolve_resume(runs_dir, resume, team, cfg) -> str | None:
    from collm_train.run import ResumeError, resolve_resume

    try:
        return resolve_resume(runs_dir, resume, team.task, cfg.algo)
    except ResumeError as e:
        raise CliError(str(e)) from None


def _out_dir(out_dir: str | None) -> str:
    from collm_serve.models import collm_home

    return out_dir if out_dir is not None else str(collm_home() / "adapters")


def _preflight_agents(team, team_path, out_dir, model) -> None:
    """Reachable, the right agents, the same base model, adapters loadable from --out: all
    problems at once, before training (else a push fails only after the model loaded and trained)."""
    from collm_serve.models import model_id_for
    from collm_train.push import preflight

    problems = preflight(team, list(team.agents), out_dir, model_id_for(model), team_path=str(team_path))
    if problems:
        head = "the team's agents cannot take the trained adapters" if len(problems) > 1 else problems[0]
        raise CliError(head if len(problems) == 1 else head + ":\n" + "\n".join(f"  {p}" for p in problems))


def _progress_wanted(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def apply_cpu_affinity(cfg) -> None:
    """Pin this process to cfg.cpu_affinity BEFORE torch starts its threads (the Trainer then sets
    torch.set_num_threads to the cores it may use: config.num_threads); the agents' counterpart
    is collm_serve/agent/server.py `_pin_to_cores`. No-op when None."""
    import os

    if cfg.cpu_affinity is None:
        return
    available = os.sched_getaffinity(0)
    if not set(cfg.cpu_affinity) <= available:
        raise CliError(f"--cpu-affinity: cores {sorted(set(cfg.cpu_affinity) - available)} are not available to "
                       f"this process (available: {sorted(available)}); list cores from that set")
    os.sched_setaffinity(0, cfg.cpu_affinity)


def _setup(cfg, team, team_path, model, runs_dir, resume, trackers, traces_info):
    apply_cpu_affinity(cfg)
    from collm_serve.models import ModelUnavailableError, model_id_for, resolve_model
    from collm_train.distributed import is_main_process
    from collm_train.run import RunLog, provenance

    try:
        base_dir = resolve_model(model)
    except ModelUnavailableError as e:
        raise CliError(str(e)) from None
    from collm_train.trainer import Trainer

    agents = list(team.agents)
    hparams = {**cfg.model_dump(), "team": str(team_path), "model": model, "task": team.task,
               "provenance": provenance(*traces_info)}
    run = RunLog(runs_dir, team.task, cfg.algo, cfg.seed, hparams, resume, write=is_main_process(),
                 trackers=trackers if is_main_process() else ())
    trainer = Trainer(cfg, base_dir, agents, base_model_id=model_id_for(model))
    if resume and run.checkpoint.exists():
        trainer.load_checkpoint(run.checkpoint)
    return trainer, run, agents


def _push(trainer, team, out_dir, agents, metrics):
    """`publish`, with a push failure as a one-line CLI error."""
    from collm_train.push import PushError, publish

    addresses = {a: team.agents[a].address for a in agents} if team is not None else None
    try:
        return publish(trainer, out_dir, agents, metrics, addresses=addresses, team=team)
    except PushError as e:
        raise CliError(f"push failed: {e}") from None


class _UpdateProgress:
    """A rich bar over the minibatches of each update (stderr; only when wanted, see --progress)."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self.job = None

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def on_step(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.job is None or done == 1:
            if self.job is not None:
                self.bar.remove_task(self.job)
            self.job = self.bar.add_task("update: minibatch", total=total)
        self.bar.update(self.job, completed=done)


# -- commands -----------------------------------------------------------------------------------


def _refuse_options_before(ctx: click.Context) -> None:
    """`collm-train --lr -5 plot ...`: the group's options would be silently ignored; refuse."""
    from click.core import ParameterSource

    sub_name = ctx.invoked_subcommand
    given = [p for p in ctx.command.params
             if p.name and ctx.get_parameter_source(p.name) not in (ParameterSource.DEFAULT, None)]
    if not given:
        return
    sub = ctx.command.get_command(ctx, sub_name)
    takes = {p.name for p in sub.params} if sub is not None else set()
    names = ", ".join(p.opts[0] for p in given)
    movable = [p.opts[0] for p in given if p.name in takes]
    fix = (f"put them after it: collm-train {sub_name} {' '.join(movable)} ..." if len(movable) == len(given)
           else f"`{sub_name}` does not take {', '.join(p.opts[0] for p in given if p.name not in takes)} "
                f"(`collm-train {sub_name} --help` lists its options)")
    raise CliError(f"{names} given before the subcommand `{sub_name}` would be ignored; {fix}")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="collm", prog_name="collm-train")
@click.pass_context
@_common(team_required=False)
@click.option("--traces", type=click.Path(exists=True, dir_okay=False), help="trace store (SQLite)")
@click.option("--push", is_flag=True, help="load + activate the new versions on the team's services (all or none)")
@click.option("--iterations", type=int, default=1, show_default=True, help="updates over the same traces")
def main(ctx, team_path, out_dir, model, runs_dir, config_path, resume, trackers, progress, traces, push,
         iterations, **flags) -> None:
    """Offline: update on logged traces, write <out>/<agent>/v<N>/, optionally push them live."""
    if ctx.invoked_subcommand is not None:
        _refuse_options_before(ctx)
        return
    if traces is None or team_path is None:
        raise CliError("--traces and --team are required (or use a subcommand: online, plot, config)")
    team = _load_team(team_path)
    cfg = _train_config(config_path, flags)
    _check_task(cfg, team, team_path)
    episodes = _load_episodes(traces, team, team_path)
    _refuse_small_groups(cfg.algo, team, episodes)
    resume = _resolve_resume(runs_dir, resume, team, cfg)
    _check_trackers(trackers)
    out_dir = _out_dir(out_dir)
    if push:
        _preflight_agents(team, team_path, out_dir, model)
    # -- nothing above loads a model or imports torch
    trainer, run, agents = _setup(cfg, team, team_path, model, runs_dir, resume, trackers,
                                  ([e.episode_id for e in episodes], traces))
    metrics = {}
    show = _progress_wanted(progress)
    try:
        with _UpdateProgress(show) as bar:
            first = run.last_iteration() + 1
            for it in range(first, first + iterations):
                metrics = trainer.update(episodes, on_step=bar.on_step)
                run.log(it, metrics)
                trainer.save_checkpoint(run.checkpoint)
                if show or iterations > 1:
                    click.echo(f"iteration {it}: actor loss {metrics['losses/actor']:.4f}, "
                               f"return {metrics['charts/return']:.3f}", err=True)
        version, dirs, results = _push(trainer, team if push else None, out_dir, agents, metrics)
    finally:
        run.close()
    click.echo(f"run {run.name}: wrote v{version} for {', '.join(agents)} under {out_dir}")
    for r in results:
        click.echo(f"  {r.agent} @ {r.address}: active v{r.version} sha256={r.sha256} ({r.load_ms:.0f} ms load)")


@main.command()
@_common
@click.option("--iterations", type=int, default=10, show_default=True)
@click.option("--episodes-per-iteration", type=int, default=8, show_default=True)
@click.option("--traces", default=None, help="trace store (default: the team's)")
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--async", "async_", is_flag=True,
              help="collect continuously while the trainer updates and pushes each version at once "
                   "(collm_train/online_async.py); not yet the default: its learning speed is still being measured")
@click.option("--ahead", type=click.IntRange(min=0), default=None,
              help="--async: batches collection may run ahead of the trainer (0 = the sync loop) "
                   "[default: --max-staleness, else 1]")
def online(team_path, out_dir, model, runs_dir, config_path, resume, trackers, progress, iterations,
           episodes_per_iteration, traces, concurrency, async_, ahead, **flags):
    """collect (orchestrator) → update → push, repeatedly, on the live team (--async: overlapped)."""
    team = _load_team(team_path)
    cfg = _train_config(config_path, flags)
    _check_task(cfg, team, team_path)
    if ahead is not None and not async_:
        raise CliError("--ahead applies to the async loop; add --async or drop --ahead")
    if async_ and ahead is not None and cfg.max_staleness is not None and ahead > cfg.max_staleness:
        click.echo(f"warning: --ahead {ahead} > --max-staleness {cfg.max_staleness}: actions more than "
                   f"{cfg.max_staleness} versions stale will be dropped (charts/dropped_stale)", err=True)
    traces = traces or team.traces
    _check_trace_file(traces, team, team_path)
    _refuse_small_groups(cfg.algo, team)
    resume = _resolve_resume(runs_dir, resume, team, cfg)
    _check_trackers(trackers)
    out_dir = _out_dir(out_dir)
    _preflight_agents(team, team_path, out_dir, model)
    # -- nothing above loads a model or imports torch
    from collm_train.online import online_loop
    from collm_train.online_async import AsyncLoopError, async_online_loop
    from collm_train.push import PushError

    trainer, run, agents = _setup(cfg, team, team_path, model, runs_dir, resume, trackers, (None, traces))
    loop, extra = (async_online_loop, {"ahead": ahead}) if async_ else (online_loop, {})
    try:
        with _UpdateProgress(_progress_wanted(progress)) as bar:
            history = loop(team, trainer, run, out_dir=out_dir, iterations=iterations,
                           episodes_per_iteration=episodes_per_iteration, traces=traces,
                           concurrency=concurrency, echo=click.echo, on_step=bar.on_step, **extra)
    except PushError as e:
        raise CliError(f"push failed: {e}; fix the agent, then rerun with --resume {run.name}") from None
    except AsyncLoopError as e:
        raise CliError(str(e)) from None
    finally:
        run.close()
    if iterations > 0 and not history:
        raise CliError(f"all {iterations} iteration(s) skipped: no episode completed, nothing was trained; "
                       "fix the failures listed above (e.g. start the team's agents) and rerun")


@main.command("config")
@train_config_options
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TrainConfig YAML to merge (flags override it)")
@click.option("--dump", is_flag=True, help="print the config as YAML (what this command does; kept for scripts)")
def config_cmd(config_path, dump, **flags):
    """Print the full effective TrainConfig as YAML (each field's description as a comment).

    The output is a valid --config file: `collm-train config --algo dc --dump > train.yaml`."""
    import textwrap

    import yaml

    cfg = _train_config(config_path, flags)
    values = cfg.model_dump(mode="json")
    ran = paper_values(cfg.task, cfg.algo) if cfg.preset == "paper" else {}
    what = (f", what the paper ran on {cfg.task}" if ran else
            f"; the paper did not run {cfg.task!r}, no per-task values" if cfg.task and cfg.preset == "paper" else "")
    lines = [f"# effective TrainConfig: algo {cfg.algo}, preset {cfg.preset}{what} (docs/paper-fidelity.md)"]
    for name, field in TrainConfig.model_fields.items():
        lines += [f"# {ln}" for ln in textwrap.wrap(" ".join((field.description or "").split()), 96)]
        line = yaml.safe_dump({name: values[name]}, default_flow_style=True, sort_keys=False).strip()[1:-1]
        if name in ran and values[name] == ran[name][0]:
            line += f"  # paper: {ran[name][1]}"
        lines.append(line)
    click.echo("\n".join(lines))


@main.command()
@click.argument("runs_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="curves.png", show_default=True)
def plot(runs_dir, out):
    """Reward / loss / value curves per algorithm (PNG)."""
    from collm_train.plot import plot_runs

    try:
        path = plot_runs(runs_dir, out)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
