"""Kubernetes manifests, shipped and generated: every kustomization assembles (checked by hand and
by `kubectl kustomize`), the output validates against the Kubernetes 1.37 OpenAPI schemas
(kubernetes-validate, strict), and team addresses, Services, Deployments, ports and probes agree.

`kubectl apply --dry-run=client` is not used: it needs an API server even in client mode (it
downloads the OpenAPI schema from the cluster); kubernetes-validate checks the same schemas offline.
"""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.helpers import DEPLOY, check_k8s, check_kustomization_tree, kubernetes_validate, kustomize

K8S_VERSION = "1.37"


def _validate(docs):
    kv = kubernetes_validate()
    for d in docs:
        kv.validate(d, K8S_VERSION, strict=True)


def test_kustomization_tree_is_complete(deploy_root):
    check_kustomization_tree(deploy_root / "k8s")


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_overlay_builds_validates_and_is_consistent(deploy_root, overlay):
    docs = kustomize(deploy_root / "k8s" / "overlays" / overlay)
    _validate(docs)
    check_k8s(docs, gpu=overlay == "gpu")
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "Deployment", "Job", "Namespace", "PersistentVolumeClaim", "Service"]
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by hand, never shipped"


def test_validation_is_real():
    docs = kustomize(DEPLOY / "k8s" / "overlays" / "cpu")
    job = next(d for d in docs if d["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] = {"grpc": {"port": "grpc"}}
    with pytest.raises(kubernetes_validate().ValidationError):
        _validate([job])


def test_secret_example_is_a_placeholder_and_not_applied():
    path = DEPLOY / "k8s" / "secret.example.yaml"
    text = path.read_text()
    assert "EXAMPLE ONLY" in text
    secrets = list(yaml.safe_load_all(text))
    _validate(secrets)
    assert {s["metadata"]["name"] for s in secrets} == {"collm-auth", "collm-tls"}
    assert all(v.startswith("REPLACE-ME") for s in secrets for v in s["stringData"].values())
    for kfile in (DEPLOY / "k8s").rglob("kustomization.yaml"):
        assert "secret.example.yaml" not in kfile.read_text()
