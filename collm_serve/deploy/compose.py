"""Docker Compose files (GPU: `compose.yaml`, CPU: `compose.cpu.yaml`) from a validated plan.

One renderer per target, so a Compose change cannot touch the Kubernetes manifests (`k8s.py`);
both follow the container contract in `layout.py`. Ports are published on loopback only; GPU
services reserve their device the Compose way
(https://docs.docker.com/compose/how-tos/gpu-support/).
"""

from __future__ import annotations

from typing import Any

from collm_serve.deploy.layout import (
    AGENT_SERVICE,
    SHM_SIZE,
    TLS_DIR,
    TOKEN_ENV,
    VOLUMES,
    _TOKENS_OF,
    _healthcheck_cmd,
)
from collm_serve.deploy.output import RenderOptions
from collm_serve.deploy.plan import DeployPlan


def _gpu_reservation(device_id: str) -> dict[str, Any]:
    return {"resources": {"reservations": {"devices": [
        {"driver": "nvidia", "device_ids": [device_id], "capabilities": ["gpu"]}]}}}


def _compose_token(env: str) -> str:
    """Compose interpolation: a required token stops `docker compose up` with this message."""
    if TOKEN_ENV[env][1]:
        return f"${{{env}:?set {env} (e.g. openssl rand -hex 32): every service requires a token; deploy/README.md}}"
    return f"${{{env}:-}}"


_COMPOSE_KEYS = ("image", "build", "profiles", "entrypoint", "command", "environment", "ports", "volumes",
                 "shm_size", "restart", "depends_on", "healthcheck", "deploy")


def render_compose(plan: DeployPlan, gpu: bool, opts: RenderOptions) -> dict[str, Any]:
    image = opts.image_gpu if gpu else opts.image_cpu
    dockerfile = "deploy/docker/Dockerfile.gpu" if gpu else "deploy/docker/Dockerfile.cpu"

    def service(role: str, volumes: tuple[str, ...], **keys: Any) -> dict[str, Any]:
        keys["image"] = image
        if opts.build_context is not None:  # every service builds the same image; BuildKit caches it
            keys["build"] = {"context": opts.build_context, "dockerfile": dockerfile}
        keys["environment"] = {env: _compose_token(env) for env in _TOKENS_OF[role]}
        keys["volumes"] = ["./config:/config:ro", *(f"{v}:{VOLUMES[v]}" for v in volumes)]
        if plan.tls:
            keys["volumes"].append(f"./tls:{TLS_DIR}:ro")
        return {k: keys[k] for k in _COMPOSE_KEYS if k in keys}

    services: dict[str, Any] = {}
    for svc in plan.services:  # one agent, or an engine group packed in one container on one GPU
        a = svc.probed
        services[svc.dns] = service(
            "agent", ("models", "adapters", "state"),
            command=svc.command,
            ports=[f"127.0.0.1:{p}:{p}" for m in svc.agents for p in m.ports],  # loopback only; publish wider on purpose
            shm_size=SHM_SIZE, restart="unless-stopped",
            healthcheck={
                "test": ["CMD", *_healthcheck_cmd(a.port, AGENT_SERVICE, a.tls, a.mtls, svc.dns)],
                # the first start converts the embedded model and starts vLLM: minutes, not seconds
                "interval": "10s", "timeout": "5s", "retries": 3, "start_period": "15m",
            },
            **({"deploy": _gpu_reservation(str(svc.gpu))} if gpu else {}),
        )
    port = plan.orchestrator_port
    services["orchestrator"] = service(
        "orchestrator", ("runs",),
        command=["orchestrate", "--config", "/config/team.yaml", "--port", str(port)],
        ports=[f"127.0.0.1:{p}:{p}" for p in (port, plan.orchestrator_metrics_port) if p is not None],
        restart="unless-stopped",
        depends_on={svc.dns: {"condition": "service_healthy"} for svc in plan.services},
        healthcheck={"test": ["CMD", *_healthcheck_cmd(port, "", plan.orchestrator_tls, plan.orchestrator_mtls,
                                                       "orchestrator")],
                     "interval": "10s", "timeout": "5s", "retries": 3, "start_period": "60s"},
    )
    services["trainer"] = service(
        "trainer", ("models", "adapters", "runs"),
        profiles=["train"], entrypoint=["collm-train"],
        # TODO(lead): final `collm-train online` flags once the trainer CLI lands (deploy/README.md).
        command=["online", "--team", "/config/team.yaml"],
        shm_size=SHM_SIZE,
        depends_on={"orchestrator": {"condition": "service_healthy"}},
        **({"deploy": _gpu_reservation(f"${{COLLM_TRAINER_GPU:-{plan.trainer_gpu}}}")} if gpu else {}),
    )
    return {"name": "collm", "services": services, "volumes": {v: {} for v in VOLUMES}}

