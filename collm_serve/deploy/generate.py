"""`render`: the whole generated tree (path -> text) from a plan and the render options.

Its own module because it is the one place that knows which files exist and where they go
(`config/`, `compose*.yaml`, `k8s/base/`, `k8s/overlays/`); it only calls the Compose and
Kubernetes renderers and the shared YAML output, and adds no checks of its own.
"""

from __future__ import annotations

from collm_serve.deploy.compose import render_compose
from collm_serve.deploy import k8s
from collm_serve.deploy.output import RenderOptions, _header, dump
from collm_serve.deploy.plan import DeployPlan


def render(plan: DeployPlan, opts: RenderOptions | None = None) -> dict[str, str]:
    """Relative path (posix) -> file text, for every generated file."""
    opts = opts or RenderOptions()
    head = _header(plan, opts)
    files: dict[str, str] = {
        "config/team.yaml": dump(plan.team_doc, header=head),
        "config/agents.yaml": dump(plan.agents_doc, header=head),
    }
    if opts.backend in ("all", "gpu"):
        files["compose.yaml"] = dump(render_compose(plan, True, opts), header=head)
    if opts.backend in ("all", "cpu"):
        files["compose.cpu.yaml"] = dump(render_compose(plan, False, opts), header=head)

    agent_files = []
    for svc in plan.services:
        path = f"agents/{svc.dns}.yaml"
        files[f"k8s/base/{path}"] = dump(*k8s.k8s_agent(svc), header=head)
        agent_files.append(path)
    files["k8s/base/namespace.yaml"] = dump(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "collm"}}, header=head)
    files["k8s/base/storage.yaml"] = dump(*k8s.k8s_storage(), header=head)
    files["k8s/base/orchestrator.yaml"] = dump(*k8s.k8s_orchestrator(plan), header=head)
    files["k8s/base/trainer-job.yaml"] = dump(k8s.k8s_trainer(), header=head)
    files["k8s/base/config/team.yaml"] = files["config/team.yaml"]
    files["k8s/base/config/agents.yaml"] = files["config/agents.yaml"]
    files["k8s/base/kustomization.yaml"] = dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "collm",
        "labels": [{"pairs": k8s._PART_OF, "includeSelectors": False}],
        "resources": ["namespace.yaml", "storage.yaml", *agent_files, "orchestrator.yaml", "trainer-job.yaml"],
        # the name gets a content hash, so a config change rolls the pods
        "configMapGenerator": [{"name": "collm-config", "files": ["config/team.yaml", "config/agents.yaml"]}],
    }, header=head)
    if opts.backend in ("all", "gpu"):
        files["k8s/overlays/gpu/kustomization.yaml"] = dump(k8s.k8s_overlay(True, opts.image_gpu), header=head)
    if opts.backend in ("all", "cpu"):
        files["k8s/overlays/cpu/kustomization.yaml"] = dump(k8s.k8s_overlay(False, opts.image_cpu), header=head)
    secret_head = ("# EXAMPLE ONLY: placeholder values, never apply as is and never commit real secrets.\n"
                   "# Create the real ones instead (deploy/README.md):\n"
                   "#   kubectl -n collm create secret generic collm-auth \\\n"
                   "#     --from-literal=token=\"$(openssl rand -hex 32)\" \\\n"
                   "#     --from-literal=admin-token=\"$(openssl rand -hex 32)\" \\\n"
                   "#     --from-literal=orchestrator-token=\"$(openssl rand -hex 32)\"\n"
                   "#   kubectl -n collm create secret generic collm-tls --from-file=tls.crt --from-file=tls.key "
                   "--from-file=ca.crt\n")
    files["k8s/secret.example.yaml"] = dump(*k8s.k8s_secret_example(), header=head + secret_head)
    return files
