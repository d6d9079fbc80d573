"""Put newly trained adapter versions into live agent services — as a team, all or none
(collm_serve/adapters/team_ops.py does the steps; the same code serves `collm-serve swap --team`):

1. Load every agent's new version WITHOUT activating it (the expensive, fallible part: each
   service verifies files, sha256, base model, rank, target modules).
2. Activate them one by one; if any activation fails, re-activate the previous version on the
   agents already switched (a team never runs a mix of old and new policies by our hand).
3. Read back each service's active version and sha256; any mismatch is a loud failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from collm_serve.adapters.manifest import read_manifest
from collm_serve.adapters.team_ops import TeamChangeError, change_team
from collm_serve.client import AgentClient, AgentError


class PushError(RuntimeError):
    pass


@dataclass
class PushResult:
    agent: str
    address: str
    version: int
    sha256: str
    load_ms: float


def _client(address: str, team=None, timeout: float = 300) -> AgentClient:
    """Loading and activating adapters needs the agents' admin role: the team's `admin_token`
    (env COLLM_ADMIN_TOKEN), else its single `auth_token` (agents that have no admin token
    treat theirs as admin). See collm_serve/auth.py."""
    kw = {}
    if team is not None:
        kw = dict(token=team.push_token, root_certificates=team.ca_file,
                  client_cert=team.client_cert_file, client_key=team.client_key_file)
    return AgentClient(address, timeout=timeout, **kw)


PROBE = ".collm-preflight-probe"  # a path under --out that never exists (see preflight)


def preflight(team, agents: list[str], out_dir: str | Path, base_model_id: str, team_path: str = "the team file",
              timeout: float = 10.0) -> list[str]:
    """Problems that would make a push fail AFTER training, found before any model loads; [] if none.

    Per agent: reachable (GetAgentInfo), the agent the team names, serving `base_model_id`, and
    willing to load adapters from `out_dir`. The last is asked of the agent itself, since only it
    knows its adapter_root: LoadAdapter of `out_dir/<agent>/.collm-preflight-probe` (never
    created) answers NOT_FOUND inside the root and PERMISSION_DENIED outside it (or without the
    admin role); nothing is loaded either way (collm_serve/adapters/validate.py resolve_inside).
    """
    from collm_serve.client import NotFoundError, PermissionDeniedError, UnauthenticatedError

    problems = []
    for agent in agents:
        address = team.agents[agent].address
        where = f"agent {agent} @ {address}"
        client = _client(address, team, timeout=timeout)
        try:
            try:
                info = client.info()
            except AgentError as e:
                fix = (f"start it (collm-serve start --agent {agent}) or correct agents.{agent}.address in {team_path}"
                       if not isinstance(e, (UnauthenticatedError, PermissionDeniedError))
                       else f"set auth_token/admin_token in {team_path} (or COLLM_AUTH_TOKEN/COLLM_ADMIN_TOKEN)")
                problems.append(f"{where} is not usable ({e.code.name}: {e.details[:120]}); fix: {fix}")
                continue
            if info.agent != agent:
                problems.append(f"{where} is agent {info.agent!r}, not {agent!r}; fix: correct agents.{agent}.address "
                                f"in {team_path}")
                continue
            if info.base_model != base_model_id:
                problems.append(f"{where} serves base model {info.base_model!r}, the trainer's --model is "
                                f"{base_model_id!r}; fix: train with the agents' --model "
                                "(adapters only fit their base)")
                continue
            try:
                client.load_adapter((Path(out_dir) / agent / PROBE).resolve(), activate=False)
            except NotFoundError:
                pass  # inside the adapter root: a real version will load
            except AgentError as e:
                fix = (f"use --out inside the agent's adapter_root (named above) or start the agent with "
                       f"--adapter-root {Path(out_dir).resolve()} (a missing admin role: admin_token in {team_path})"
                       if isinstance(e, PermissionDeniedError) else "see the agent's log")
                problems.append(f"{where} will not load adapters from --out {out_dir} ({e.code.name}: "
                                f"{e.details[:400]});\n    fix: {fix}")
        finally:
            client.close()
    return problems


def push_team(adapter_dirs: dict[str, Path], addresses: dict[str, str], team=None) -> list[PushResult]:
    """adapter_dirs / addresses: agent name -> new adapter folder / service address.

    All or none through `collm_serve.adapters.team_ops.change_team` (the same steps as
    `collm-serve swap --team`): load everywhere, activate everywhere, put back on failure.
    """
    manifests = {a: read_manifest(d) for a, d in adapter_dirs.items()}
    clients = {a: _client(addresses[a], team) for a in adapter_dirs}
    loaded: dict[str, float] = {}

    def load(agent: str, c: AgentClient) -> None:
        r = c.load_adapter(Path(adapter_dirs[agent]).resolve(), version=manifests[agent].version, activate=False)
        loaded[agent] = r.load_ms

    try:
        try:
            changes = change_team(clients, lambda a, c: c.activate_adapter(manifests[a].version).active, prepare=load)
        except TeamChangeError as e:
            raise PushError(f"{e} (pushing v{max(m.version for m in manifests.values())})") from e
        results = []
        for ch in changes:
            m, active = manifests[ch.agent], ch.after
            if active.version != m.version or active.sha256 != m.sha256:
                raise PushError(
                    f"{ch.agent} reports v{active.version} sha256={active.sha256[:12]}…, expected "
                    f"v{m.version} sha256={m.sha256[:12]}…"
                )
            results.append(PushResult(ch.agent, addresses[ch.agent], active.version, active.sha256, loaded[ch.agent]))
        return results
    finally:
        for c in clients.values():
            c.close()


def publish(trainer, out_dir: str | Path, agents: list[str], metrics: dict[str, float], *,
            addresses: dict[str, str] | None = None, team=None) -> tuple[int, dict[str, Path], list[PushResult]]:
    """Save the team's next adapter version; push it when `addresses` are given (rank 0 only)."""
    from collm_train.distributed import is_main_process

    dirs = trainer.save_adapters(out_dir, metrics=metrics)  # numbered by manifest.next_version
    version = trainer.version
    if addresses is None or not is_main_process():  # under torchrun only rank 0 pushes
        return version, dirs, []
    return version, dirs, push_team(dirs, addresses, team)
