"""`collm-serve`: run an agent service and talk to running ones.

Thin entry points with lazy heavy imports (`--help` stays fast); every failure exits non-zero
with ONE line naming the problem (no traceback for user errors).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click


class CliError(click.ClickException):
    """One-line error, exit code 1 (2 for usage errors, handled by click)."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _client(address: str, token: str | None, ca: str | None, cert: str | None, key: str | None,
            server_name: str | None, timeout: float = 60.0):
    from collm_serve.client import AgentClient

    return AgentClient(address, token=token, root_certificates=ca, client_cert=cert,
                       client_key=key, server_name=server_name, timeout=timeout)


def _address(ctx, param, value: str) -> str:
    """`--address` must name a port: without one gRPC silently dials 443."""
    from collm_serve.addresses import check_address

    if value is None:  # optional where --team may replace it
        return value
    try:
        return check_address(value, "--address")
    except ValueError as e:
        raise click.BadParameter(str(e).removeprefix("--address "), ctx, param) from None


def _remote(fn=None, *, admin: bool = False, team: bool = False):
    """Shared options of commands that call a running agent. `admin`: the command changes
    adapters, so its token defaults to env COLLM_ADMIN_TOKEN, then COLLM_AUTH_TOKEN. `team`:
    `--team team.yaml` may replace `--address` (every agent of the team, all or none)."""
    if fn is None:
        return lambda f: _remote(f, admin=admin, team=team)
    env = ["COLLM_ADMIN_TOKEN", "COLLM_AUTH_TOKEN"] if admin else ["COLLM_AUTH_TOKEN"]
    if team:
        fn = click.option("--json", "as_json", is_flag=True, help="print JSON (with --team: every agent's outcome)")(fn)
        fn = click.option("--team", "team_path", type=click.Path(exists=True, dir_okay=False), default=None,
                          help="team YAML: act on every agent of the team, all or none (instead of --address); "
                               "token and TLS files default to the team's")(fn)
    fn = click.option("--address", required=not team, default=None, callback=_address,
                      help="host:port of the agent" + (" (or --team)" if team else ""))(fn)
    fn = click.option("--token", envvar=env, default=None,
                      help=f"bearer token (env {' or '.join(env)})" + ("; needs the admin role" if admin else ""))(fn)
    fn = click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA certificate: use TLS")(fn)
    fn = click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="client certificate (mTLS)")(fn)
    fn = click.option("--key", type=click.Path(exists=True, dir_okay=False), help="client key (mTLS)")(fn)
    fn = click.option("--server-name", default=None, help="TLS server name override")(fn)
    return fn


def _call(fn):
    from collm_serve.client import AgentError

    try:
        return fn()
    except AgentError as e:
        raise CliError(f"{e.code.name}: {e.details}") from None


def _ask(address, token, ca, cert, key, server_name, op):
    """`op(client)` on one agent (the `_remote` options), a failure as one line."""
    with _client(address, token, ca, cert, key, server_name) as c:
        return _call(lambda: op(c))


def _echo_message(msg) -> None:
    """A protobuf reply as JSON (`--json`), every field shown."""
    from google.protobuf.json_format import MessageToDict

    click.echo(json.dumps(MessageToDict(msg, always_print_fields_with_no_presence=True), indent=2))


def _ref(ref) -> str:
    return "base model" if ref.version == 0 else f"{ref.name} v{ref.version} sha256={ref.sha256}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="collm", prog_name="collm-serve")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              envvar="COLLM_LOG_LEVEL", show_default=True, help="log level (env COLLM_LOG_LEVEL)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", envvar="COLLM_LOG_FORMAT",
              show_default=True, help="json: one JSON object per log line on stderr (env COLLM_LOG_FORMAT)")
def main(log_level, log_format) -> None:
    """CoLLM agent services: each agent one gRPC microservice backed by vLLM."""
    from collm_serve.logs import configure_logging

    configure_logging(log_level, log_format)


@main.command()
@click.option("--agent", default=None, help="agent name in the config (helper, main, coder, ...)")
@click.option("--agents", "agent_list", default=None,
              help="comma-separated agents to serve PACKED: one process, one engine (one copy of the model), "
                   "each agent its own port, auth, metrics and adapters")
@click.option("--engine-group", default=None,
              help="serve packed every agent whose config sets engine_group to this name")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="agents YAML (default: the built-in agents)")
@click.option("--port", type=int, default=None, help="override the configured port (0 = any free)")
@click.option("--host", default=None, help="override the bind address")
@click.option("--engine", type=click.Choice(["vllm", "transformers"]), default=None)
@click.option("--model", default=None, help="embedded alias or local HF folder")
@click.option("--metrics-port", type=int, default=None, help="Prometheus port (0 = any free)")
@click.option("--http-port", type=int, default=None,
              help="OpenAI-compatible HTTP port (/v1/chat/completions ...; 0 = any free; default off)")
@click.option("--adapter-root", type=click.Path(file_okay=False), default=None)
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="override the state dir (packed: a parent folder, agent X records in DIR/X)")
def start(agent, agent_list, engine_group, config_path, port, host, engine, model, metrics_port, http_port,
          adapter_root, state_dir) -> None:
    """Start agent services in the foreground (SIGTERM drains and exits): one agent (--agent), or
    several packed on one engine (--agents a,b or --engine-group NAME)."""
    from collm_serve.config import ConfigError
    from collm_serve.agent.packing import group_members, load_packed_configs

    if sum(x is not None for x in (agent, agent_list, engine_group)) != 1:
        raise CliError("give one of --agent NAME, --agents a,b (packed) or --engine-group NAME (packed)")
    try:
        if agent is not None:
            names = [agent]
        elif agent_list is not None:
            names = [n.strip() for n in agent_list.split(",") if n.strip()]
        else:
            names = group_members(engine_group, config_path)
        configs = load_packed_configs(
            names, config_path, port=port, host=host, engine=engine, model=model,
            metrics_port=metrics_port, http_port=http_port, adapter_root=adapter_root, state_dir=state_dir,
        )
    except ConfigError as e:
        raise CliError(str(e)) from None
    from collm_serve.models import ModelUnavailableError, resolve_model

    try:
        resolve_model(configs[0].model)
    except ModelUnavailableError as e:
        raise CliError(str(e)) from None
    from collm_serve.rpc import BindError
    from collm_serve.agent.server import run

    try:
        code = run(configs)
    except (BindError, ConfigError) as e:
        raise CliError(str(e)) from None
    sys.exit(code)


def _query(op):
    """A read-only command on one agent: the `_remote` options and --json; it asks `op(client)`
    and prints the reply as JSON, or passes it to the decorated function, which shows it (its
    name and docstring are the command's). One definition of what such commands share."""

    def command(show):
        @_remote
        @click.option("--json", "as_json", is_flag=True, help="print JSON")
        @functools.wraps(show)
        def run(address, token, ca, cert, key, server_name, as_json) -> None:
            r = _ask(address, token, ca, cert, key, server_name, op)
            if as_json:
                _echo_message(r)
            else:
                show(r)

        return main.command()(run)

    return command


@_query(lambda c: c.info())
def info(r) -> None:
    """Agent name, base model, engine, active adapter and limits."""
    click.echo(f"agent:      {r.agent}\nbase model: {r.base_model}\nengine:     {r.engine}\n"
               f"adapter:    {_ref(r.active_adapter)}\nstate:      {r.state}")
    lim = r.limits
    click.echo(f"limits:     max_tokens={lim.max_tokens} max_prompt_tokens={lim.max_prompt_tokens} "
               f"max_model_len={lim.max_model_len} concurrent={lim.max_concurrent_requests} "
               f"queued={lim.max_queued_requests} max_n={lim.max_n} max_lora_rank={lim.max_lora_rank}")


def _one_target(address, team_path) -> bool:
    """True for --team, False for --address; exactly one of them."""
    if address and team_path:
        raise CliError("give --address (one agent) or --team (every agent of a team), not both")
    if not address and not team_path:
        raise CliError("give --address host:port, or --team team.yaml for every agent of a team")
    return team_path is not None


def _team_clients(team_path, token, ca, cert, key, server_name) -> dict:
    """Admin clients of every agent of a team, in the team's agent order. Credentials: the
    flags given on the command line, else the team file's (admin_token, else auth_token; both
    fall back to env COLLM_ADMIN_TOKEN / COLLM_AUTH_TOKEN), as the trainer's push uses them."""
    ctx = click.get_current_context()
    team = _team(team_path, None)
    if ctx.get_parameter_source("token") != click.core.ParameterSource.COMMANDLINE:
        token = team.push_token or token
    return {name: _client(a.address, token, ca or team.ca_file, cert or team.client_cert_file,
                          key or team.client_key_file, server_name, timeout=300)
            for name, a in team.agents.items()}


def _team_op(clients: dict, op, as_json: bool, what: str) -> None:
    """Run a team_ops operation; print every agent's outcome; exit 1 unless the team moved."""
    from collm_serve.adapters.team_ops import TeamChangeError

    error = ""
    try:
        changes = op(clients)
    except TeamChangeError as e:
        changes, error = e.changes, str(e)
    finally:
        for c in clients.values():
            c.close()
    if as_json:
        click.echo(json.dumps({"ok": not error, "error": error, "agents": [c.to_dict() for c in changes]}, indent=2))
    else:
        for ch in changes:
            click.echo(str(ch))
    if error:
        raise CliError(f"team {what} failed (all or none): {error}")


@main.command()
@_remote(admin=True, team=True)
@click.option("--adapter", "path", default=None,
              help="adapter folder (inside the agent's adapter root); with --team: the folder holding "
                   "<agent>/v<N> (default: <agent>/v<N> inside each agent's own adapter root)")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="expected version (default: the manifest's); required with --team")
@click.option("--no-activate", is_flag=True, help="load only; activate later")
def swap(address, token, ca, cert, key, server_name, team_path, as_json, path, version, no_activate) -> None:
    """Load an adapter version, verify it and make it active atomically (--team: on every agent,
    all loaded first, then all activated; one failure puts the others back)."""
    if _one_target(address, team_path):
        from collm_serve.adapters.team_ops import swap_team

        if version is None:
            raise CliError("--team needs --version N: every agent loads its <agent>/v<N>")
        if no_activate:
            raise CliError("--no-activate is for one agent; with --team, load with --address per agent")
        clients = _team_clients(team_path, token, ca, cert, key, server_name)
        # no --adapter: "<agent>/v<N>" resolves inside each agent's own adapter root (server side)
        base = Path(path).resolve() if path and Path(path).exists() else Path(path or "")
        paths = {a: str(base / a / f"v{version}") for a in clients}
        _team_op(clients, lambda cs: swap_team(cs, paths, version), as_json, "swap")
        return
    if not path:
        raise CliError("give --adapter FOLDER (or --team team.yaml --version N)")
    r = _ask(address, token, ca, cert, key, server_name,
             lambda c: c.load_adapter(str(Path(path).resolve()) if Path(path).exists() else path,
                                      version, activate=not no_activate))
    a = r.adapter
    if as_json:
        return _echo_message(r)
    click.echo(f"loaded {a.name} v{a.version} sha256={a.sha256} rank={a.rank} in {r.load_ms:.0f} ms; "
               f"active: {_ref(r.active)}")


@main.command()
@_remote(admin=True, team=True)
@click.option("--version", "version", type=click.IntRange(min=1), default=None, help="a loaded version")
@click.option("--base", "use_base", is_flag=True, help="serve the base model (no adapter)")
def activate(address, token, ca, cert, key, server_name, team_path, as_json, version, use_base) -> None:
    """Make an already loaded version active (--team: on every agent, all or none)."""
    if (version is None) == (not use_base):
        raise CliError("give --version N (a loaded version) or --base, not both")
    if _one_target(address, team_path):
        from collm_serve.adapters.team_ops import activate_team

        clients = _team_clients(team_path, token, ca, cert, key, server_name)
        _team_op(clients, lambda cs: activate_team(cs, None if use_base else version), as_json, "activate")
        return
    r = _ask(address, token, ca, cert, key, server_name,
             lambda c: c.activate_adapter(version, use_base_model=use_base))
    _print_switch(r, as_json)


def _print_switch(r, as_json: bool) -> None:
    if as_json:
        _echo_message(r)
    else:
        click.echo(f"active: {_ref(r.active)} (was {_ref(r.previous)})")


@_query(lambda c: c.list_adapters())
def adapters(r) -> None:
    """Active and loaded adapter versions."""
    from collm_serve.proto.collm.v1 import agent_pb2 as pb

    click.echo(f"active: {_ref(r.active)}")
    for a in r.adapters:
        state = "ACTIVE" if a.state == pb.ADAPTER_STATE_ACTIVE else "loaded"
        click.echo(f"  v{a.version:<4} {state:<7} sha256={a.sha256[:16]}… rank={a.rank} "
                   f"algo={a.algorithm or '-'} step={a.step} path={a.path}")


@main.command()
@_remote(admin=True, team=True)
def rollback(address, token, ca, cert, key, server_name, team_path, as_json) -> None:
    """Make the previously active version active again (--team: on every agent, all or none)."""
    if _one_target(address, team_path):
        from collm_serve.adapters.team_ops import rollback_team

        clients = _team_clients(team_path, token, ca, cert, key, server_name)
        _team_op(clients, rollback_team, as_json, "rollback")
        return
    r = _ask(address, token, ca, cert, key, server_name, lambda c: c.rollback_adapter())
    _print_switch(r, as_json)


@main.command("import-adapter")
@click.argument("peft_dir", type=click.Path())
@click.option("--agent", required=True, help="agent name in the agents config: whose base model it must fit")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="agents YAML (default: the built-in agents)")
@click.option("--model", default=None, help="override the agent's model, as `start --model`")
@click.option("--adapter-root", type=click.Path(file_okay=False), default=None,
              help="override the agent's adapter root (default: its config's, else $COLLM_HOME/adapters)")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="version number to give it (default: 1 + the agent's highest); use one number per team")
@click.option("--base-model", default=None,
              help="state that it was trained on the agent's base model when peft's base_model_name_or_path "
                   "names it differently or not at all (tensor shapes are still checked)")
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
def import_adapter(peft_dir, agent, config_path, model, adapter_root, version, base_model, as_json) -> None:
    """Make a plain peft/TRL LoRA folder servable: check it fits the agent, copy it into the agent's
    adapter root as its next version and write the manifest (sha256 of the weights)."""
    from collm_serve.adapters.importer import ImportAdapterError, import_adapter as run_import, target_for
    from collm_serve.config import ConfigError, load_agent_config
    from collm_serve.models import ModelUnavailableError

    try:
        config = load_agent_config(agent, config_path, model=model, adapter_root=adapter_root)
        checked = run_import(peft_dir, target_for(config), version=version, base_model=base_model)
    except (ConfigError, ModelUnavailableError, ImportAdapterError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot import {peft_dir}: {e}") from None
    m = checked.manifest
    if as_json:
        click.echo(json.dumps({"path": str(checked.path), "rank": checked.rank,
                               "target_modules": list(checked.target_modules), "manifest": json.loads(m.to_json())},
                              indent=2))
        return
    click.echo(f"imported {peft_dir} as {m.name} v{m.version} sha256={m.sha256} rank={checked.rank} "
               f"modules={','.join(checked.target_modules)} base={m.base_model}\n  -> {checked.path}")
    click.echo(f"serve it: collm-serve swap --address HOST:PORT --adapter {checked.path}", err=True)


@main.command()
@_remote(admin=True)
@click.option("--version", "version", type=int, required=True)
@click.option("--force", is_flag=True, help="allow unloading the active version (falls back to base)")
def unload(address, token, ca, cert, key, server_name, version, force) -> None:
    """Unload a version and free its engine slot."""
    r = _ask(address, token, ca, cert, key, server_name, lambda c: c.unload_adapter(version, force))
    click.echo(f"active: {_ref(r.active)}; loaded: {list(r.loaded_versions)}")


@main.command()
@_remote
@click.option("--prompt", required=True, help="user message")
@click.option("--max-tokens", type=int, default=64)
@click.option("--temperature", type=float, default=None)
@click.option("--seed", type=int, default=None)
def ask(address, token, ca, cert, key, server_name, prompt, max_tokens, temperature, seed) -> None:
    """Send one chat message and print the answer."""
    out = _ask(address, token, ca, cert, key, server_name,
               lambda c: c.generate(messages=[{"role": "user", "content": prompt}],
                                    max_tokens=max_tokens, temperature=temperature, seed=seed))
    click.echo(out.text)
    click.echo(f"[{len(out.token_ids)} tokens, sum logprob {sum(out.logprobs):.3f}, adapter {out.adapter}]", err=True)


# -- orchestrator (logic in collm_serve.orchestrator) ---------------------------------------


def _team(config_path, task, **overrides):
    from collm_serve.config import ConfigError
    from collm_serve.orchestrator.teams import default_team
    from collm_serve.team import load_team_config

    try:
        if config_path is not None:
            return load_team_config(config_path, **overrides)
        if task is None:
            raise CliError("pass --team team.yaml, or --task to use the built-in agents' ports")
        return default_team(task, **overrides)
    except ConfigError as e:
        raise CliError(str(e)) from None


@main.command()
@click.option("--team", "team_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="team YAML (default: the built-in agents on their default localhost ports)")
@click.option("--task", default=None, help="override the team's task (coding, writing, build, toy)")
@click.option("--episodes", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--split", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("--traces", default=None, help="trace store path or sqlite:/// URL (default: the team's)")
@click.option("--group-size", type=click.IntRange(1, 16), default=None,
              help="K samples per agent per node: branching rollouts (tree of K + ... + K^T turns)")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="episodes in flight")
@click.option("--resume", is_flag=True, help="skip (problem, seed) pairs already stored ok")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True,
              help="index of the first planned episode (problem start mod P, seed team.seed + start)")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="override the team's base seed")
@click.option("--max-tree-turns", type=click.IntRange(min=1), default=None,
              help="refuse branching trees larger than this (default 1024)")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="progress bar on a terminal, one line per episode otherwise")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON on stdout")
def collect(team_path, task, episodes, split, traces, group_size, concurrency, resume, start, seed,
            max_tree_turns, progress, as_json) -> None:
    """Run episodes of a team's task and store them in the trace store.

    Ctrl-C (or SIGTERM) finishes the turns in flight and stops; a second one stops at once.
    Either way the store stays consistent; continue with --resume.
    """
    import asyncio

    from collm_serve.config import ConfigError
    from collm_serve.orchestrator.collector import collect as run_collect
    from collm_serve.orchestrator.episode import MAX_TREE_TURNS, TreeTooLargeError
    from collm_serve.traces.store import TraceStoreError

    team = _team(team_path, task, seed=seed)
    try:
        summary = asyncio.run(run_collect(
            team, episodes, split, traces=traces, task=task, group_size=group_size,
            concurrency=concurrency, resume=resume, start=start,
            max_tree_turns=max_tree_turns or MAX_TREE_TURNS, progress=progress, handle_signals=True,
        ))
    except (ConfigError, TreeTooLargeError, TraceStoreError, ValueError) as e:
        raise CliError(str(e)) from None
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps({**asdict(summary), "ok": summary.ok, "failed": summary.failed,
                               "mean_return": summary.mean_return}, indent=2))
    mean = "-" if summary.mean_return is None else f"{summary.mean_return:.4f}"
    click.echo(
        f"{summary.task}/{summary.split}: {summary.ok} ok, {summary.failed} failed, "
        f"{summary.skipped} already complete; mean return {mean}; {summary.elapsed_s:.1f} s "
        f"({summary.episodes_per_s:.2f} episodes/s); traces: {summary.traces}",
        err=as_json,
    )
    if summary.interrupted:
        click.echo(f"interrupted ({summary.interrupted}); {summary.not_started} episode(s) not started; "
                   "continue with --resume", err=True)
        sys.exit({"SIGINT": 130, "SIGTERM": 143}.get(summary.interrupted, 1))
    if summary.all_failed:  # a Job whose every episode failed must not be marked Succeeded
        click.echo(f"error: all {summary.failed} episode(s) failed; first reasons:", err=True)
        for line in summary.failure_report():
            click.echo(line, err=True)
        sys.exit(1)


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="team YAML")
@click.option("--port", type=int, default=None, help="override orchestrator_port (0 = any free)")
@click.option("--host", default=None, help="override orchestrator_host")
@click.option("--metrics-port", type=int, default=None,
              help="Prometheus port of episode metrics (override orchestrator_metrics_port; 0 = any free)")
@click.option("--traces", default=None, help="trace store path or sqlite:/// URL (default: the team's)")
@click.option("--max-concurrent-episodes", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--token", envvar="COLLM_ORCHESTRATOR_TOKEN", default=None,
              help="bearer token callers must send (env COLLM_ORCHESTRATOR_TOKEN, preferred: flags show in ps; "
                   "default: the team's orchestrator_token, else the agents' auth_token)")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="server certificate (PEM): serve TLS (with --tls-key)")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="server private key (PEM)")
@click.option("--tls-client-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA of client certificates: require mTLS")
def orchestrate(config_path, port, host, metrics_port, traces, max_concurrent_episodes, token, tls_cert, tls_key,
                tls_client_ca) -> None:
    """Serve OrchestratorService (RunEpisode, StreamEpisode) for a team; SIGTERM drains."""
    from collm_serve.config import ConfigError
    from collm_serve.orchestrator.service import run
    from collm_serve.rpc import BindError
    from collm_serve.traces.store import TraceStoreError

    tls = {k: v for k, v in (("cert_file", tls_cert), ("key_file", tls_key), ("client_ca_file", tls_client_ca)) if v}
    team = _team(config_path, None, orchestrator_token=token, orchestrator_tls=tls or None)
    try:
        code = run(team, host=host, port=port, traces=traces, max_concurrent_episodes=max_concurrent_episodes,
                   metrics_port=metrics_port)
    except (ConfigError, TraceStoreError, BindError) as e:
        raise CliError(str(e)) from None
    sys.exit(code)


@main.command("deploy-config")
@click.option("--team", "team_path", required=True, type=click.Path(dir_okay=False), help="team YAML")
@click.option("--out", "out_dir", default="deploy/generated", show_default=True, type=click.Path(file_okay=False),
              help="output folder (compose files, config/, k8s/)")
@click.option("--agents", "agents_path", type=click.Path(dir_okay=False), default=None,
              help="agents YAML the services run with (default: the team's agents_config, else the built-in agents)")
@click.option("--backend", type=click.Choice(["all", "gpu", "cpu"]), default="all", show_default=True)
@click.option("--image-gpu", default=None, help="GPU image (default collm-gpu:<version>)")
@click.option("--image-cpu", default=None, help="CPU image (default collm-cpu:<version>)")
@click.option("--build-context", type=click.Path(file_okay=False), default=None,
              help="repository root for compose build: sections (default: this source checkout, if any)")
@click.option("--check", is_flag=True, help="write nothing; exit 1 if --out differs from what would be generated")
def deploy_config(team_path, out_dir, agents_path, backend, image_gpu, image_cpu, build_context, check) -> None:
    """Generate Compose files and Kubernetes manifests from a team config (ports, GPU ids, agents)."""
    import os

    from collm_serve.config import ConfigError
    from collm_serve.deploy import RenderOptions, build_plan, differences, render, source_checkout, write

    try:
        plan = build_plan(team_path, agents_path, backend=backend)
    except ConfigError as e:
        raise CliError(str(e)) from None
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    context = build_context or source_checkout()
    defaults = RenderOptions()
    opts = RenderOptions(
        backend=backend, image_gpu=image_gpu or defaults.image_gpu, image_cpu=image_cpu or defaults.image_cpu,
        build_context=None if context is None else Path(os.path.relpath(Path(context).resolve(),
                                                                         Path(out_dir).resolve())).as_posix(),
        out_label=Path(out_dir).as_posix(),
    )
    files = render(plan, opts)
    if check:
        stale = differences(files, out_dir)
        if stale:
            raise CliError(f"{out_dir} is out of date ({', '.join(stale)}); rerun without --check")
        click.echo(f"{out_dir}: {len(files)} files up to date")
        return
    write(files, out_dir)
    agents = ", ".join(f"{a.name}: port {a.port}" + ("" if a.gpu is None else f" gpu {a.gpu}") for a in plan.agents)
    click.echo(f"wrote {len(files)} files to {out_dir} ({agents}; orchestrator port {plan.orchestrator_port})")


if __name__ == "__main__":
    main()
