"""Kubernetes manifests (kustomize base + GPU/CPU overlays) from a validated plan.

One renderer per target, so a Kubernetes change cannot touch the Compose files (`compose.py`);
both follow the container contract in `layout.py`. Pods run non-root with Prometheus scrape
annotations on their metrics port; agents are probed with native gRPC probes, or with the image's
checker under TLS
(https://kubernetes.io/docs/tasks/configure-pod-container/configure-liveness-readiness-startup-probes/).
"""

from __future__ import annotations

from typing import Any

import yaml

from collm_serve.deploy.layout import AGENT_SERVICE, TLS_DIR, TOKEN_ENV, VOLUMES, _TOKENS_OF, _healthcheck_cmd
from collm_serve.deploy.output import _Dumper
from collm_serve.deploy.plan import DeployPlan, ServicePlan

_PART_OF = {"app.kubernetes.io/part-of": "collm"}


def _labels(component: str, instance: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "collm", "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": instance}


def _probe(port: int, service: str, tls: bool, mtls: bool, server_name: str, **timing: int) -> dict[str, Any]:
    if tls:  # native gRPC probes have no TLS: exec the image's checker instead
        return {"exec": {"command": _healthcheck_cmd(port, service, tls, mtls, server_name)}, **timing}
    grpc: dict[str, Any] = {"port": port}
    if service:
        grpc["service"] = service
    return {"grpc": grpc, **timing}


def _pod_volumes(*names: str) -> list[dict[str, Any]]:
    claims = {"models": "collm-models", "adapters": "collm-adapters", "state": "collm-state", "runs": "collm-runs"}
    vols: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": "collm-config"}}]
    vols += [{"name": n, "persistentVolumeClaim": {"claimName": claims[n]}} for n in names]
    vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
    vols.append({"name": "tls", "secret": {"secretName": "collm-tls", "optional": True}})
    return vols


def _mounts(*names: str) -> list[dict[str, Any]]:
    m: list[dict[str, Any]] = [{"name": "config", "mountPath": "/config", "readOnly": True}]
    m += [{"name": n, "mountPath": VOLUMES[n]} for n in names]
    m.append({"name": "dshm", "mountPath": "/dev/shm"})
    m.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    return m


def _token_env(role: str) -> list[dict[str, Any]]:
    """The tokens a container of `role` reads, from the collm-auth Secret (`TOKEN_ENV`)."""
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": "collm-auth", "key": TOKEN_ENV[env][0],
                                                          **({} if TOKEN_ENV[env][1] else {"optional": True})}}}
            for env in _TOKENS_OF[role]]


_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                 "seccompProfile": {"type": "RuntimeDefault"}}
_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _service(name: str, labels: dict[str, str], ports: list[tuple[str, int]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": labels, "ports": [
                {"name": pname, "port": p, "targetPort": pname, "protocol": "TCP"} for pname, p in ports]}}


def k8s_agent(svc: ServicePlan) -> list[dict[str, Any]]:
    """Deployment + Service of one agent, or of an engine group packed in one pod (ports of agent i
    named grpc-i, metrics-i, http-i; probes ask the agent that turns SERVING last)."""
    labels = _labels("agent", svc.dns)
    ports: list[tuple[str, int]] = []
    for i, m in enumerate(svc.agents):
        suffix = f"-{i}" if svc.group else ""
        ports += [(f"grpc{suffix}", m.port)] + [(n + suffix, p) for n, p in (("metrics", m.metrics_port),
                                                                              ("http", m.http_port)) if p is not None]
    a = svc.probed
    container = {
        "name": "agent", "image": "collm",
        "args": svc.command,
        "ports": [{"name": n, "containerPort": p} for n, p in ports],
        "env": _token_env("agent"),
        # loading (model conversion, engine start) reports NOT_SERVING: give it 15 minutes
        "startupProbe": _probe(a.port, AGENT_SERVICE, a.tls, a.mtls, svc.dns, periodSeconds=10, failureThreshold=90),
        "readinessProbe": _probe(a.port, AGENT_SERVICE, a.tls, a.mtls, svc.dns, periodSeconds=10, failureThreshold=2),
        "livenessProbe": _probe(a.port, "", a.tls, a.mtls, svc.dns, periodSeconds=20, failureThreshold=3,
                                timeoutSeconds=5),
        "volumeMounts": _mounts("models", "adapters", "state"),
        "securityContext": _CONTAINER_SECURITY,
    }
    template_meta: dict[str, Any] = {"labels": labels}
    if svc.metrics_port is not None:
        template_meta["annotations"] = scrape_annotations(svc.metrics_port)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": svc.dns, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one GPU per service: a rolling update would need a second
            "selector": {"matchLabels": labels},
            "template": {"metadata": template_meta, "spec": {
                "securityContext": _POD_SECURITY,
                "terminationGracePeriodSeconds": int(svc.drain_seconds) + 15,  # drain, then the engine shutdown
                "containers": [container],
                "volumes": _pod_volumes("models", "adapters", "state"),
            }},
        },
    }
    return [deployment, _service(svc.dns, labels, ports)]


def scrape_annotations(port: int) -> dict[str, str]:
    """The pod annotations Prometheus' common Kubernetes scrape config looks for."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def k8s_orchestrator(plan: DeployPlan) -> list[dict[str, Any]]:
    labels = _labels("orchestrator", "orchestrator")
    port = plan.orchestrator_port
    ports = [("grpc", port)] + ([("metrics", plan.orchestrator_metrics_port)]
                                if plan.orchestrator_metrics_port is not None else [])
    container = {
        "name": "orchestrator", "image": "collm",
        "args": ["orchestrate", "--config", "/config/team.yaml", "--port", str(port)],
        "ports": [{"name": n, "containerPort": p} for n, p in ports],
        "env": _token_env("orchestrator"),
        "readinessProbe": _probe(port, "", plan.orchestrator_tls, plan.orchestrator_mtls, "orchestrator",
                                 periodSeconds=10),
        "livenessProbe": _probe(port, "", plan.orchestrator_tls, plan.orchestrator_mtls, "orchestrator",
                                periodSeconds=20, failureThreshold=3, timeoutSeconds=5),
        "volumeMounts": _mounts("runs"),
        "securityContext": _CONTAINER_SECURITY,
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "orchestrator", "labels": labels},
        "spec": {"replicas": 1,
                 "strategy": {"type": "Recreate"},  # one SQLite writer on a ReadWriteOnce volume
                 "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels, **(
                     {"annotations": scrape_annotations(plan.orchestrator_metrics_port)}
                     if plan.orchestrator_metrics_port is not None else {})}, "spec": {
                     "securityContext": _POD_SECURITY, "containers": [container],
                     "volumes": _pod_volumes("runs")}}},
    }
    return [deployment, _service("orchestrator", labels, ports)]


def k8s_trainer() -> dict[str, Any]:
    labels = _labels("trainer", "trainer")
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "trainer", "labels": labels},
        "spec": {
            "suspend": True,  # created idle by `kubectl apply -k`; start: kubectl patch ... suspend=false
            "backoffLimit": 2,
            "template": {"metadata": {"labels": labels}, "spec": {
                "restartPolicy": "Never",
                "securityContext": _POD_SECURITY,
                # SQLite traces (WAL) need one kernel: run on the orchestrator's node, same RWO volume
                "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchLabels": _labels("orchestrator", "orchestrator")},
                    "topologyKey": "kubernetes.io/hostname"}]}},
                "containers": [{
                    "name": "trainer", "image": "collm", "command": ["collm-train"],
                    # TODO(lead): final `collm-train online` flags once the trainer CLI lands.
                    "args": ["online", "--team", "/config/team.yaml"],
                    "env": _token_env("trainer"),
                    "volumeMounts": _mounts("models", "adapters", "runs"),
                    "securityContext": _CONTAINER_SECURITY,
                }],
                "volumes": _pod_volumes("models", "adapters", "runs"),
            }},
        },
    }


def k8s_storage() -> list[dict[str, Any]]:
    def pvc(name: str, size: str, mode: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                "spec": {"accessModes": [mode], "resources": {"requests": {"storage": size}}}}

    # RWX: agents and the trainer sit on different nodes and share adapters / model / state.
    return [pvc("collm-adapters", "10Gi", "ReadWriteMany"), pvc("collm-models", "20Gi", "ReadWriteMany"),
            pvc("collm-state", "1Gi", "ReadWriteMany"), pvc("collm-runs", "10Gi", "ReadWriteOnce")]


def k8s_secret_example() -> list[dict[str, Any]]:
    meta = {"namespace": "collm", "annotations": {"collm.example/placeholder": "EXAMPLE ONLY - replace every value"}}
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "collm-auth", **meta}, "type": "Opaque",
         "stringData": {"token": "REPLACE-ME: the agents' inference token (required)",
                        "admin-token": "REPLACE-ME: the agents' admin token, for adapter swaps (optional)",
                        "orchestrator-token": "REPLACE-ME: token of OrchestratorService callers (optional)"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "collm-tls", **meta}, "type": "Opaque",
         "stringData": {"tls.crt": "REPLACE-ME: server certificate chain (PEM)",
                        "tls.key": "REPLACE-ME: server private key (PEM)",
                        "ca.crt": "REPLACE-ME: CA certificate (PEM)"}},
    ]


def _json_patch(ops: list[dict[str, Any]]) -> str:
    return yaml.dump(ops, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _image_ref(image: str) -> dict[str, str]:
    """`registry:5000/collm-gpu:0.1.0` -> newName + newTag; `name@sha256:...` -> newName + digest."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return {"newName": name, "digest": digest}
    if ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
        return {"newName": name, "newTag": tag}
    return {"newName": image}


def k8s_overlay(gpu: bool, image: str) -> dict[str, Any]:
    image_entry = {"name": "collm", **_image_ref(image)}
    if gpu:
        resources = {"limits": {"nvidia.com/gpu": 1}}
        extra = [{"op": "add", "path": "/spec/template/spec/tolerations",
                  "value": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}]
    else:
        resources = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
        extra = []
    ops = [{"op": "add", "path": "/spec/template/spec/containers/0/resources", "value": resources}, *extra]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../../base"],
        "images": [image_entry],
        "patches": [
            {"target": {"kind": "Deployment", "labelSelector": "app.kubernetes.io/component=agent"},
             "patch": _json_patch(ops)},
            {"target": {"kind": "Job", "name": "trainer"}, "patch": _json_patch(ops)},
        ],
    }
