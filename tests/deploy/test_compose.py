"""Compose files, shipped and generated: YAML structure (agents pinned to distinct GPUs, gRPC health
checks, health-gated start order) and the Compose CLI's own validation, which needs no engine."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import AGENT_SERVICE, check_compose, compose_config, load_yaml

FILES = [("compose.yaml", True), ("compose.cpu.yaml", False)]


@pytest.mark.parametrize("name, gpu", FILES)
def test_compose_structure(deploy_root, name, gpu):
    check_compose(deploy_root / name, gpu)


@pytest.mark.parametrize("name, gpu", FILES)
def test_compose_cli_accepts_and_keeps_the_pins(deploy_root, name, gpu):
    """`docker-compose config` validates against the Compose schema and resolves interpolation."""
    cfg = compose_config(deploy_root / name)
    raw = load_yaml(deploy_root / name)["services"]
    assert set(cfg["services"]) == set(raw)  # the train profile was enabled
    for svc_name, svc in cfg["services"].items():
        if raw[svc_name].get("command", [None])[0] == "start":
            assert svc["healthcheck"]["test"][1] == "collm-healthcheck"
            assert AGENT_SERVICE in svc["healthcheck"]["test"]
            devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
            assert (devices[0]["device_ids"] == raw[svc_name]["deploy"]["resources"]["reservations"]["devices"][0][
                "device_ids"]) if gpu else not devices
        config_mount = [v for v in svc["volumes"] if v["target"] == "/config"]
        assert config_mount and config_mount[0]["read_only"] is True
        assert (deploy_root / "config").samefile(config_mount[0]["source"])
    if gpu:  # the trainer's GPU defaults to the first GPU no agent uses
        trainer_ids = cfg["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        agent_ids = {d for s in cfg["services"].values() if s.get("command", [None])[0] == "start"
                     for d in s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]}
        assert trainer_ids == [str(max(int(i) for i in agent_ids) + 1)]


def test_compose_cli_rejects_an_invalid_file(tmp_path):
    """The validator is real: an unknown key fails."""
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  a:\n    image: x\n    gpus_pinned: [0]\n")
    with pytest.raises(AssertionError, match="gpus_pinned"):
        compose_config(bad)


def test_compose_refuses_to_start_without_a_token(deploy_root):
    """No open door by omission: without COLLM_AUTH_TOKEN, Compose stops before any service runs."""
    import os
    import subprocess

    from tests.deploy.helpers import tool

    env = {k: v for k, v in os.environ.items() if k != "COLLM_AUTH_TOKEN"}
    done = subprocess.run([tool("docker-compose"), "-f", str(deploy_root / "compose.yaml"), "config"],
                          capture_output=True, text=True, env={**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
                          timeout=120)
    assert done.returncode != 0 and "set COLLM_AUTH_TOKEN" in done.stderr, done.stderr
