"""`collm-train`: CoLLM-CC / CoLLM-DC / Monte Carlo updates from traces, pushed to live agents.

    collm-train --algo cc --traces runs/traces.db --team team.yaml --out adapters/ --push
    collm-train online --algo cc --team team.yaml --iterations 50 --episodes-per-iteration 16
    collm-train plot runs/ --out curves.png
    collm-train config --algo cc --preset paper   # the effective TrainConfig as YAML
"""

from __future__ import annotations

import sys

import click

ALGOS = ["cc", "dc", "magrpo", "mareinforce", "marloo", "maremax"]
PRESETS = ["paper", "collm"]


class CliError(click.ClickException):
    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _common(fn=None, *, team_required: bool = True):
    if fn is None:
        return lambda f: _common(f, team_required=team_required)
    opts = [
        click.option("--algo", type=click.Choice(ALGOS), default="cc", show_default=True),
        click.option("--preset", type=click.Choice(PRESETS), default=None,
                     help="update-rule defaults: paper (CoMLRL's rules, the default) or collm (PPO-style)"),
        click.option("--team", "team_path", type=click.Path(exists=True, dir_okay=False), required=team_required,
                     help="team YAML: agents, addresses, task"),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default="adapters", show_default=True,
                     help="adapters/<agent>/v<N>/ are written here (inside the agents' adapter root)"),
        click.option("--model", default="embedded:smollm2-135m-instruct", show_default=True,
                     help="base model the agents serve (embedded alias or local folder)"),
        click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default="runs", show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--lr", type=float, default=None, help="actor LR (LoRA default 1e-4)"),
        click.option("--critic-lr", type=float, default=None),
        click.option("--gamma", type=float, default=None),
        click.option("--epochs", type=int, default=None, help="passes over each batch"),
        click.option("--minibatch-size", type=int, default=None),
        click.option("--lora-r", type=int, default=None),
        click.option("--max-staleness", type=int, default=None, help="drop actions > S versions older than the learner"),
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="TrainConfig YAML (flags override it)"),
        click.option("--resume", default=None, help="run name to resume (its checkpoint and metrics)"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _train_config(algo, seed, config_path, **flags):
    import yaml
    from pydantic import ValidationError

    from collm_train.config import TrainConfig

    data = yaml.safe_load(open(config_path)) if config_path else {}
    data.update({"algo": algo}, **{k: v for k, v in {"seed": seed, **flags}.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as e:
        first = e.errors()[0]
        raise CliError(f"train config: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _load_team(team_path):
    from collm_serve.config import ConfigError
    from collm_serve.team import load_team_config

    try:
        return load_team_config(team_path)
    except ConfigError as e:
        raise CliError(str(e)) from None


def _refuse_small_groups(algo, team=None, episodes=None) -> None:
    """K >= 2 for group baselines, checked on the team / the traces BEFORE any model loads."""
    from collm_train.data import GroupSizeError, check_team_group_size, check_traces

    try:
        if episodes is not None:
            check_traces(algo, episodes, list(team.agents))
        else:
            check_team_group_size(algo, team.group_size)
    except GroupSizeError as e:
        raise CliError(str(e)) from None


def _setup(algo, team_path, model, runs_dir, seed, config_path, resume, **flags):
    from collm_serve.config import ConfigError
    from collm_serve.models import ModelUnavailableError, model_id_for, resolve_model
    from collm_serve.team import load_team_config
    from collm_train.distributed import is_main_process
    from collm_train.run import RunLog
    from collm_train.trainer import Trainer

    try:
        team = load_team_config(team_path)
        base_dir = resolve_model(model)
    except (ConfigError, ModelUnavailableError) as e:
        raise CliError(str(e)) from None
    cfg = _train_config(algo, seed, config_path, **flags)
    agents = list(team.agents)
    run = RunLog(runs_dir, team.task, cfg.algo, cfg.seed,
                 {**cfg.model_dump(), "team": str(team_path), "model": model, "task": team.task}, resume,
                 write=is_main_process())
    trainer = Trainer(cfg, base_dir, agents, base_model_id=model_id_for(model))
    if resume and run.checkpoint.exists():
        trainer.load_checkpoint(run.checkpoint)
    return team, trainer, run, agents


def _push(trainer, team, out_dir, agents, metrics):
    """`publish`, with a push failure as a one-line CLI error."""
    from collm_train.push import PushError, publish

    addresses = {a: team.agents[a].address for a in agents} if team is not None else None
    try:
        return publish(trainer, out_dir, agents, metrics, addresses=addresses, team=team)
    except PushError as e:
        raise CliError(f"push failed: {e}") from None


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="collm", prog_name="collm-train")
@click.pass_context
@_common(team_required=False)
@click.option("--traces", type=click.Path(exists=True, dir_okay=False), help="trace store (SQLite)")
@click.option("--push", is_flag=True, help="load + activate the new versions on the team's services (all or none)")
@click.option("--iterations", type=int, default=1, show_default=True, help="updates over the same traces")
def main(ctx, algo, preset, team_path, out_dir, model, runs_dir, seed, lr, critic_lr, gamma, epochs, minibatch_size,
         lora_r, max_staleness, config_path, resume, traces, push, iterations) -> None:
    """Offline: update on logged traces, write adapters/<agent>/v<N>/, optionally push them live."""
    if ctx.invoked_subcommand is not None:
        return
    if traces is None or team_path is None:
        raise CliError("--traces and --team are required (or use a subcommand: online, plot)")
    from collm_serve.traces import TraceStore

    team = _load_team(team_path)
    with TraceStore(traces, create=False) as store:
        episodes = list(store.iter_episodes(task=team.task, status="ok"))
    if not episodes:
        raise CliError(f"{traces}: no complete episodes of task {team.task!r}")
    _refuse_small_groups(algo, team, episodes)  # before the model loads
    from rich.progress import Progress

    team, trainer, run, agents = _setup(algo, team_path, model, runs_dir, seed, config_path, resume, lr=lr,
                                        critic_lr=critic_lr, gamma=gamma, epochs=epochs, preset=preset,
                                        minibatch_size=minibatch_size, lora_r=lora_r, max_staleness=max_staleness)
    metrics = {}
    with Progress() as bar:
        job = bar.add_task(f"{algo} on {len(episodes)} episodes", total=iterations)
        for it in range(run.last_iteration() + 1, run.last_iteration() + iterations + 1):
            metrics = trainer.update(episodes)
            run.log(it, metrics)
            trainer.save_checkpoint(run.checkpoint)
            bar.advance(job)
    version, dirs, results = _push(trainer, team if push else None, out_dir, agents, metrics)
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
def online(algo, preset, team_path, out_dir, model, runs_dir, seed, lr, critic_lr, gamma, epochs, minibatch_size,
           lora_r, max_staleness, config_path, resume, iterations, episodes_per_iteration, traces, concurrency):
    """collect (orchestrator) → update → push, repeatedly, on the live team."""
    _refuse_small_groups(algo, _load_team(team_path))  # before the model loads
    from collm_train.online import online_loop

    team, trainer, run, agents = _setup(algo, team_path, model, runs_dir, seed, config_path, resume, lr=lr,
                                        critic_lr=critic_lr, gamma=gamma, epochs=epochs, preset=preset,
                                        minibatch_size=minibatch_size, lora_r=lora_r, max_staleness=max_staleness)
    from collm_train.push import PushError

    try:
        history = online_loop(team, trainer, run, out_dir=out_dir, iterations=iterations,
                              episodes_per_iteration=episodes_per_iteration, traces=traces or team.traces,
                              concurrency=concurrency, echo=click.echo)
    except PushError as e:
        raise CliError(f"push failed: {e}") from None
    finally:
        run.close()
    if iterations > 0 and not history:
        raise CliError(f"all {iterations} iteration(s) skipped: no episode completed, nothing was trained; "
                       "fix the failures listed above (e.g. start the team's agents) and rerun")


@main.command("config")
@click.option("--algo", type=click.Choice(ALGOS), default="cc", show_default=True)
@click.option("--preset", type=click.Choice(PRESETS), default=None, help="default: paper")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TrainConfig YAML to merge (flags override it)")
def config_cmd(algo, preset, config_path):
    """Print the full effective TrainConfig as YAML (each field's description as a comment).

    The output is a valid --config file: `collm-train config --algo dc > train.yaml`."""
    import textwrap

    import yaml

    from collm_train.config import TrainConfig

    cfg = _train_config(algo, None, config_path, preset=preset)
    values = cfg.model_dump(mode="json")
    lines = [f"# effective TrainConfig: algo {cfg.algo}, preset {cfg.preset} (docs/paper-fidelity.md)"]
    for name, field in TrainConfig.model_fields.items():
        lines += [f"# {ln}" for ln in textwrap.wrap(" ".join((field.description or "").split()), 96)]
        lines.append(yaml.safe_dump({name: values[name]}, default_flow_style=True, sort_keys=False).strip()[1:-1])
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
