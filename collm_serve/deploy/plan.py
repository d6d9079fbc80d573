"""The deployment plan: the team and agents configs loaded, cross-checked once, and rewritten for
the containers. Separate from the renderers so every check runs before any file is produced and the
Compose and Kubernetes renderers read one validated `DeployPlan`, never the raw configs.

Checked once, with one-line errors (`ConfigError`): every team agent exists in the agents config;
each address is `host:port` and its port is the port the agent listens on; ports are fixed and
unique on one host (agents, metrics, HTTP, orchestrator); for GPU output every agent has a GPU id and
no two agents share one; names give valid, distinct DNS-1123 names (Compose service = Kubernetes
Service = the host in the rewritten team file).

Metrics are on: each agent and the orchestrator get a metrics port (their gRPC port +
`METRICS_PORT_OFFSET` unless configured). Tokens found in either config are dropped with a warning
(`collm_serve/deploy/layout.py`: tokens come from the environment only).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import ValidationError

from collm_serve.config import AgentConfig, ConfigError, load_agents_file
from collm_serve.config_errors import format_validation_error
from collm_serve.deploy.layout import TLS_DIR, TOKEN_ENV, VOLUMES, Backend
from collm_serve.team import TeamConfig, load_team_config

RESERVED_NAMES = ("orchestrator", "trainer")
_TOKEN_KEYS = {"auth_token": "COLLM_AUTH_TOKEN", "admin_token": "COLLM_ADMIN_TOKEN",
               "orchestrator_token": "COLLM_ORCHESTRATOR_TOKEN"}
# Metrics are on in generated deployments: a config without metrics_port (orchestrator_metrics_port)
# gets its gRPC port + this offset; set one explicitly when that port is taken.
METRICS_PORT_OFFSET = 100
_DNS = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class AgentPlan:
    """One agent service as deployed."""

    name: str  # agent name in the configs (`--agent`)
    dns: str  # Compose service, Kubernetes Deployment/Service, host in the rewritten team file
    port: int
    gpu: int | None
    metrics_port: int | None
    tls: bool
    mtls: bool
    drain_seconds: float
    http_port: int | None = None  # the OpenAI-compatible endpoint, when the agent config turns it on


@dataclass(frozen=True)
class DeployPlan:
    """Everything the renderers need; validated once in `build_plan`."""

    agents: tuple[AgentPlan, ...]
    orchestrator_port: int
    orchestrator_metrics_port: int | None
    team_doc: dict[str, Any]  # the team file as the containers read it (/config/team.yaml)
    agents_doc: dict[str, Any]  # the agents file as the services read it (/config/agents.yaml)
    team_label: str
    agents_label: str | None  # None = the built-in agents
    warnings: tuple[str, ...] = field(default=())
    orchestrator_tls: bool = False
    orchestrator_mtls: bool = False

    @property
    def tls(self) -> bool:
        return (any(a.tls for a in self.agents) or self.team_doc.get("ca_file") is not None
                or self.orchestrator_tls)

    @property
    def trainer_gpu(self) -> int:
        """Default GPU of the trainer: the first one no agent uses (override: COLLM_TRAINER_GPU)."""
        return max((a.gpu for a in self.agents if a.gpu is not None), default=-1) + 1


def dns_name(agent: str) -> str:
    """`writer_a` -> `writer-a`: Compose service and Kubernetes object names share this one rule."""
    return agent.lower().replace("_", "-")


def split_address(address: str, where: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{where}: address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _rewrite_traces(traces: str) -> str:
    """SQLite files move to the shared runs volume; other stores (URLs) stay as they are."""
    if traces.startswith("sqlite:///"):
        traces = traces[len("sqlite:///"):]
    elif "://" in traces:
        return traces
    return f"{VOLUMES['runs']}/{PurePosixPath(traces).name or 'traces.db'}"


def _resolve_agents_path(team_path: Path, team: TeamConfig, agents_path: str | os.PathLike[str] | None):
    if agents_path is not None:
        return Path(agents_path)
    if team.agents_config is None:
        return None
    p = Path(team.agents_config)
    if not p.is_absolute() and (team_path.parent / p).exists():
        return team_path.parent / p  # like Compose: relative to the file that names it
    return p


def build_plan(team_path: str | os.PathLike[str], agents_path: str | os.PathLike[str] | None = None,
               *, backend: Backend = "all") -> DeployPlan:
    """Load and cross-check the team and agents configs; raise ConfigError with one line."""
    team_path = Path(team_path)
    team = load_team_config(team_path, check_files=False)  # TLS files: container paths, checked there
    raw_team = yaml.safe_load(team_path.read_text())
    agents_file = _resolve_agents_path(team_path, team, agents_path)
    agents_raw, agents_source = load_agents_file(agents_file)
    warnings: list[str] = []

    team_doc = copy.deepcopy(raw_team)
    for key, env in _TOKEN_KEYS.items():
        if team_doc.pop(key, None) is not None:
            warnings.append(f"{team_path}: {key} not copied into generated files; set {env} (compose) "
                            f"or key {TOKEN_ENV[env][0]!r} of the collm-auth Secret (Kubernetes)")
    agents_doc: dict[str, Any] = {"agents": {}}
    plans: list[AgentPlan] = []
    used_ports: dict[int, str] = {}
    used_dns: dict[str, str] = {}

    def take_port(port: int, owner: str) -> None:
        if port == 0:
            raise ConfigError(f"{owner}: port 0 (pick any) cannot be published; set a fixed port")
        if port in used_ports:
            raise ConfigError(f"{owner}: port {port} is also used by {used_ports[port]}; "
                              "ports must be unique on one host")
        used_ports[port] = owner

    for name, member in team.agents.items():
        where = f"{team_path}: agents.{name}"
        if name not in agents_raw:
            raise ConfigError(f"{where}: no such agent in {agents_source} (have: {', '.join(sorted(agents_raw))})")
        dns = dns_name(name)
        if not _DNS.match(dns) or dns in RESERVED_NAMES:
            raise ConfigError(f"{where}: name gives {dns!r}, not a usable DNS-1123 service name "
                              f"(lowercase letters, digits, '-'; not {' or '.join(RESERVED_NAMES)})")
        if dns in used_dns:
            raise ConfigError(f"{where}: service name {dns!r} is also that of agent {used_dns[dns]}")
        used_dns[dns] = name

        settings = dict(agents_raw[name])
        settings.pop("name", None)
        raw_member = raw_team["agents"][name] or {}
        for key in ("engine", "model"):  # team-level deployment overrides win, as `start --engine` would
            if key in raw_member and raw_member[key] is not None:
                settings[key] = raw_member[key]
        for key in ("auth_token", "admin_token"):
            if settings.pop(key, None) is not None:
                warnings.append(f"{agents_source}: agents.{name}.{key} not copied; use {_TOKEN_KEYS[key]}")
        try:  # TLS files are container paths (/tls/...), checked where they exist, not here
            cfg = AgentConfig(name=name, **{k: v for k, v in settings.items() if k != "tls"})
        except ValidationError as e:
            raise ConfigError(format_validation_error(agents_source, e, AgentConfig, loc_prefix=f"agents.{name}")) from e

        _, address_port = split_address(member.address, where)
        take_port(cfg.port, f"agents.{name}")
        if address_port != cfg.port:
            raise ConfigError(f"{where}: address port {address_port} != port {cfg.port} the agent listens on "
                              f"({agents_source}); make them equal")
        metrics_port = cfg.port + METRICS_PORT_OFFSET if cfg.metrics_port is None else cfg.metrics_port
        take_port(metrics_port, f"agents.{name}.metrics_port")
        settings["metrics_port"] = metrics_port
        if cfg.http_port is not None:
            take_port(cfg.http_port, f"agents.{name}.http_port")

        tls = settings.get("tls")
        mtls = bool(tls and tls.get("client_ca_file"))
        if tls:
            settings["tls"] = _tls_paths(tls, mtls)
        settings.update(host="0.0.0.0", adapter_root=VOLUMES["adapters"], state_dir=f"{VOLUMES['state']}/{name}")
        agents_doc["agents"][name] = settings
        team_doc["agents"][name]["address"] = f"{dns}:{cfg.port}"
        plans.append(AgentPlan(name, dns, cfg.port, member.gpu, metrics_port, bool(tls), mtls, cfg.drain_seconds,
                               cfg.http_port))

    take_port(team.orchestrator_port, "orchestrator_port")
    orch_metrics = team.orchestrator_metrics_port
    if orch_metrics is None:
        orch_metrics = team.orchestrator_port + METRICS_PORT_OFFSET
    take_port(orch_metrics, "orchestrator_metrics_port")
    if backend in ("all", "gpu"):
        by_gpu: dict[int, str] = {}
        for a in plans:
            if a.gpu is None:
                raise ConfigError(f"{team_path}: agents.{a.name}.gpu: not set; GPU deployment pins each agent "
                                  "to one GPU (set gpu: N, or generate with --backend cpu)")
            if a.gpu in by_gpu:
                raise ConfigError(f"{team_path}: agents.{a.name}.gpu: GPU {a.gpu} is also agents.{by_gpu[a.gpu]}'s; "
                                  "one agent per GPU on one host")
            by_gpu[a.gpu] = a.name

    team_doc["orchestrator_host"] = "0.0.0.0"
    team_doc["orchestrator_metrics_port"] = orch_metrics
    team_doc["traces"] = _rewrite_traces(team.traces)
    team_doc["agents_config"] = "/config/agents.yaml"
    for key, target in (("ca_file", "ca.crt"), ("client_cert_file", "client.crt"), ("client_key_file", "client.key")):
        if team_doc.get(key) is not None:
            team_doc[key] = f"{TLS_DIR}/{target}"
    orch_tls = team_doc.get("orchestrator_tls")
    orch_mtls = bool(orch_tls and orch_tls.get("client_ca_file"))
    if orch_tls:
        team_doc["orchestrator_tls"] = _tls_paths(orch_tls, orch_mtls)
    return DeployPlan(
        agents=tuple(plans), orchestrator_port=team.orchestrator_port, orchestrator_metrics_port=orch_metrics,
        team_doc=team_doc,
        agents_doc=agents_doc, team_label=team_path.as_posix(),
        agents_label=None if agents_file is None else Path(agents_file).as_posix(),
        warnings=tuple(warnings), orchestrator_tls=bool(orch_tls), orchestrator_mtls=orch_mtls,
    )


def _tls_paths(tls: dict[str, Any], mtls: bool) -> dict[str, Any]:
    """A server's tls section with the files at the /tls mount (Secret collm-tls); identities kept."""
    out: dict[str, Any] = {"cert_file": f"{TLS_DIR}/tls.crt", "key_file": f"{TLS_DIR}/tls.key"}
    if mtls:
        out["client_ca_file"] = f"{TLS_DIR}/ca.crt"
    if tls.get("identities"):
        out["identities"] = tls["identities"]
    return out
