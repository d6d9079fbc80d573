"""The deployment plan: the team and agents configs loaded, cross-checked once, and rewritten for
the containers. Separate from the renderers so every check runs before any file is produced and the
Compose and Kubernetes renderers read one validated `DeployPlan`, never the raw configs.

Checked once, with one-line errors (`ConfigError`): every team agent exists in the agents config;
each address is `host:port` and its port is the port the agent listens on; ports are fixed and
unique on one host (agents, metrics, HTTP, orchestrator); for GPU output every service has a GPU id and
no two services share one; names give valid, distinct DNS-1123 names (Compose service = Kubernetes
Service = the host in the rewritten team file).

Packing: agents with the same `engine_group` (team file, else agents file) become ONE service
(`ServicePlan`: one container/pod, one GPU, one engine, `collm-serve start --engine-group G`), each
agent still on its own ports; they must agree on every engine setting (collm_serve/agent/packing.py).

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
from collm_serve.agent.packing import check_packable
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
    service: str = ""  # dns of the service (container/pod) that serves it: its own, or its engine group's
    group: str | None = None  # engine_group: packed with the other agents of the group

    @property
    def ports(self) -> list[int]:
        return [self.port] + [p for p in (self.metrics_port, self.http_port) if p is not None]


@dataclass(frozen=True)
class ServicePlan:
    """One container / pod: one agent, or the agents of an engine group packed on one engine."""

    dns: str
    agents: tuple[AgentPlan, ...]
    group: str | None = None

    @property
    def command(self) -> list[str]:
        select = ["--engine-group", self.group] if self.group else ["--agent", self.agents[0].name]
        return ["start", *select, "--config", "/config/agents.yaml"]

    @property
    def gpu(self) -> int | None:
        return self.agents[0].gpu

    @property
    def probed(self) -> AgentPlan:
        """The agent health checks ask: the last of the group, which turns SERVING last."""
        return self.agents[-1]

    @property
    def metrics_port(self) -> int | None:
        return self.agents[0].metrics_port  # the engine's vllm:* families are on every agent's port

    @property
    def drain_seconds(self) -> float:
        return max(a.drain_seconds for a in self.agents)


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
    def services(self) -> tuple[ServicePlan, ...]:
        """The containers / pods, in team order: an engine group where its first agent is."""
        out: dict[str, list[AgentPlan]] = {}
        for a in self.agents:
            out.setdefault(a.service or a.dns, []).append(a)
        groups = {a.service or a.dns: a.group for a in self.agents}
        return tuple(ServicePlan(dns, tuple(members), groups[dns]) for dns, members in out.items())

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
    configs: dict[str, AgentConfig] = {}
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
        for key in ("engine", "model", "engine_group"):  # team-level deployment overrides win, as `start --engine` would
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
        service = dns if cfg.engine_group is None else dns_name(cfg.engine_group)
        team_doc["agents"][name]["address"] = f"{service}:{cfg.port}"
        plans.append(AgentPlan(name, dns, cfg.port, member.gpu, metrics_port, bool(tls), mtls, cfg.drain_seconds,
                               cfg.http_port, service, cfg.engine_group))
        configs[name] = cfg

    _check_groups(team_path, plans, configs, used_dns)
    take_port(team.orchestrator_port, "orchestrator_port")
    orch_metrics = team.orchestrator_metrics_port
    if orch_metrics is None:
        orch_metrics = team.orchestrator_port + METRICS_PORT_OFFSET
    take_port(orch_metrics, "orchestrator_metrics_port")
    if backend in ("all", "gpu"):
        by_gpu: dict[int, AgentPlan] = {}
        for a in plans:
            if a.gpu is None:
                raise ConfigError(f"{team_path}: agents.{a.name}.gpu: not set; GPU deployment pins each agent "
                                  "to one GPU (set gpu: N, or generate with --backend cpu)")
            if a.gpu in by_gpu and by_gpu[a.gpu].service != a.service:
                raise ConfigError(f"{team_path}: agents.{a.name}.gpu: GPU {a.gpu} is also agents.{by_gpu[a.gpu].name}'s; "
                                  "one agent per GPU on one host, unless packed (the same engine_group: one engine)")
            by_gpu[a.gpu] = a

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


def _check_groups(team_path: Path, plans: list[AgentPlan], configs: dict[str, AgentConfig],
                  used_dns: dict[str, str]) -> None:
    """Agents of one engine group can share an engine and a GPU; its service name is free."""
    groups: dict[str, list[AgentPlan]] = {}
    for a in plans:
        if a.group is not None:
            groups.setdefault(a.group, []).append(a)
    for group, members in groups.items():
        where = f"{team_path}: agents.{members[0].name}.engine_group"
        dns = dns_name(group)
        if not _DNS.match(dns) or dns in RESERVED_NAMES:
            raise ConfigError(f"{where}: {group!r} gives {dns!r}, not a usable DNS-1123 service name")
        if dns in used_dns and used_dns[dns] not in {m.name for m in members}:
            raise ConfigError(f"{where}: service name {dns!r} is also that of agent {used_dns[dns]}; rename the group")
        check_packable([configs[m.name] for m in members])
        gpus = {m.gpu for m in members}
        if len(gpus) > 1:
            raise ConfigError(f"{where}: the agents of engine group {group} run on one GPU but set gpu "
                              f"{sorted(g for g in gpus if g is not None)}; give them the same gpu")


def _tls_paths(tls: dict[str, Any], mtls: bool) -> dict[str, Any]:
    """A server's tls section with the files at the /tls mount (Secret collm-tls); identities kept."""
    out: dict[str, Any] = {"cert_file": f"{TLS_DIR}/tls.crt", "key_file": f"{TLS_DIR}/tls.key"}
    if mtls:
        out["client_ca_file"] = f"{TLS_DIR}/ca.crt"
    if tls.get("identities"):
        out["identities"] = tls["identities"]
    return out
