"""`collm_serve.deploy`: the plan's checks (one-line errors), what the rendered files hold,
the shipped deploy/ files equal to a fresh generation (no drift), and the CLI via CliRunner."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from collm_serve.cli import main as cli
from collm_serve.config import ConfigError, load_agent_config
from collm_serve.deploy import (
    HEADER_MARK,
    RenderOptions,
    build_plan,
    differences,
    render,
    write,
)
from collm_serve.team import load_team_config
from tests.deploy.helpers import AGENTS, DEPLOY, REPO, TEAM, write_team


def edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


# ---------------------------------------------------------------- the plan


def test_plan_reads_ports_gpus_and_names_from_the_configs(tmp_path):
    plan = build_plan(write_team(tmp_path))
    assert [(a.name, a.dns, a.port, a.gpu, a.metrics_port) for a in plan.agents] == [
        ("helper", "helper", 51001, 2, 59101), ("main", "main", 51002, 0, 51102),  # metrics on: port + 100
        ("writer_a", "writer-a", 51003, 1, 51103)]
    assert plan.orchestrator_port == 51070 and plan.trainer_gpu == 3
    assert plan.orchestrator_metrics_port == 51170 and plan.team_doc["orchestrator_metrics_port"] == 51170
    assert plan.agents_doc["agents"]["main"]["metrics_port"] == 51102
    team = plan.team_doc
    assert {n: a["address"] for n, a in team["agents"].items()} == {
        "helper": "helper:51001", "main": "main:51002", "writer_a": "writer-a:51003"}
    assert team["traces"] == "/data/runs/traces.db"
    assert team["orchestrator_host"] == "0.0.0.0" and team["agents_config"] == "/config/agents.yaml"
    agents = plan.agents_doc["agents"]
    assert agents["writer_a"]["engine"] == "transformers"  # the team's deployment override wins
    assert agents["helper"]["host"] == "0.0.0.0" and agents["helper"]["adapter_root"] == "/data/adapters"
    assert agents["main"]["state_dir"] == "/data/state/main"


def test_tokens_are_never_copied_and_each_drop_is_reported(tmp_path):
    plan = build_plan(write_team(tmp_path))
    text = "".join(render(plan).values())
    assert "token-in-team-file" not in text and "token-in-agents-file" not in text
    assert len(plan.warnings) == 2 and all("COLLM_AUTH_TOKEN" in w for w in plan.warnings)


@pytest.mark.parametrize("team_edit, agents_edit, message", [
    (("gpu: 0}", "gpu: 2}"), None, "GPU 2 is also agents.helper's; one agent per GPU"),
    (('"anything:51003", gpu: 1,', '"anything:51003",'), None, "agents.writer_a.gpu: not set"),
    (("127.0.0.1:51002", "127.0.0.1:51009"), None, "address port 51009 != port 51002"),
    (("127.0.0.1:51002", "127.0.0.1"), None, "address '127.0.0.1' has no port (gRPC would dial 443); write host:port"),
    (("orchestrator_port: 51070", "orchestrator_port: 51001"), None,
     "orchestrator_port: port 51001 is also used by agents.helper"),
    (None, ("metrics_port: 59101", "metrics_port: 51002"),
     "agents.main: port 51002 is also used by agents.helper.metrics_port"),
    (("writer_a: {address", "coder: {address"), None, "agents.coder: no such agent in"),
    (None, ("main: {port: 51002", "main: {port: 0"), "port 0 (pick any) cannot be published"),
    (None, ("main: {port: 51002", "main: {port: 51002, max_n: 0"), "agents.main.max_n: Input should be greater than 0"),
])
def test_inconsistent_configs_fail_with_one_line(tmp_path, team_edit, agents_edit, message):
    team = edit(TEAM, *team_edit) if team_edit else TEAM
    agents = edit(AGENTS, *agents_edit) if agents_edit else AGENTS
    with pytest.raises(ConfigError) as e:
        build_plan(write_team(tmp_path, team, agents))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_service_names_must_be_distinct_dns_names(tmp_path):
    agents = AGENTS + "  writer-a: {port: 51004}\n  trainer: {port: 51005}\n"
    team = edit(TEAM, '  writer_a: {address: "anything:51003", gpu: 1, engine: transformers}\n',
                '  writer_a: {address: "anything:51003", gpu: 1}\n  writer-a: {address: "x:51004", gpu: 3}\n')
    with pytest.raises(ConfigError, match="service name 'writer-a' is also that of agent writer_a"):
        build_plan(write_team(tmp_path, team, agents))
    team = edit(TEAM, '  writer_a: {address: "anything:51003", gpu: 1, engine: transformers}\n',
                '  trainer: {address: "x:51005", gpu: 1}\n')
    with pytest.raises(ConfigError, match="not a usable DNS-1123 service name"):
        build_plan(write_team(tmp_path, team, agents))


def test_cpu_backend_needs_no_gpu_ids(tmp_path):
    team = TEAM.replace(", gpu: 2", "").replace(", gpu: 0", "").replace(", gpu: 1", "")
    plan = build_plan(write_team(tmp_path, team), backend="cpu")
    files = render(plan, RenderOptions(backend="cpu"))
    assert "compose.yaml" not in files and "k8s/overlays/gpu/kustomization.yaml" not in files
    assert "nvidia" not in files["compose.cpu.yaml"]
    with pytest.raises(ConfigError, match="gpu: not set"):
        build_plan(write_team(tmp_path, team), backend="all")


def test_agents_flag_overrides_team_agents_config_and_builtin_is_the_default(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(AGENTS.replace("51001", "52001"))
    team = edit(TEAM, "localhost:51001", "localhost:52001")
    plan = build_plan(write_team(tmp_path, team), other)
    assert plan.agents[0].port == 52001 and plan.agents_label == other.as_posix()
    builtin = build_plan(DEPLOY / "team.yaml")
    assert builtin.agents_label is None and [a.port for a in builtin.agents] == [50061, 50062]


def test_tls_moves_files_to_the_tls_mount_and_switches_k8s_to_exec_probes(tmp_path):
    agents = edit(AGENTS, "main: {port: 51002,", "main: {port: 51002, tls: {cert_file: /host/a.crt, "
                  "key_file: /host/a.key, client_ca_file: /host/ca.crt},")
    team = TEAM + "ca_file: /host/ca.crt\nclient_cert_file: /host/c.crt\nclient_key_file: /host/c.key\n"
    plan = build_plan(write_team(tmp_path, team, agents))
    assert plan.agents_doc["agents"]["main"]["tls"] == {
        "cert_file": "/tls/tls.crt", "key_file": "/tls/tls.key", "client_ca_file": "/tls/ca.crt"}
    assert (plan.team_doc["ca_file"], plan.team_doc["client_key_file"]) == ("/tls/ca.crt", "/tls/client.key")
    files = render(plan)
    main = list(yaml.safe_load_all(files["k8s/base/agents/main.yaml"]))[0]
    probe = main["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["exec"]["command"][:5] == ["collm-healthcheck", "--address", "127.0.0.1:51002", "--service",
                                           "collm.v1.AgentService"]
    assert "--cert" in probe["exec"]["command"]  # mTLS: the probe needs a client certificate
    helper = list(yaml.safe_load_all(files["k8s/base/agents/helper.yaml"]))[0]
    assert "grpc" in helper["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    compose = yaml.safe_load(files["compose.yaml"])
    assert "./tls:/tls:ro" in compose["services"]["main"]["volumes"]
    assert "--ca" in compose["services"]["main"]["healthcheck"]["test"]


def test_every_service_has_a_door_and_each_role_gets_only_its_tokens(tmp_path):
    """Compose requires the inference token; the orchestrator never gets the admin token, agents
    never get the orchestrator's; Kubernetes reads the same names from the collm-auth Secret,
    `token` required, the others optional; tokens of every kind stay out of generated files."""
    team = TEAM + "admin_token: admin-in-team-file\norchestrator_token: door-in-team-file\n"
    plan = build_plan(write_team(tmp_path, team))
    files = render(plan)
    text = "".join(files.values())
    assert "admin-in-team-file" not in text and "door-in-team-file" not in text
    assert {w.split(": ")[1].split()[0] for w in plan.warnings} >= {"auth_token", "admin_token", "orchestrator_token"}
    services = yaml.safe_load(files["compose.yaml"])["services"]
    want = {"helper": {"COLLM_AUTH_TOKEN", "COLLM_ADMIN_TOKEN"},
            "orchestrator": {"COLLM_AUTH_TOKEN", "COLLM_ORCHESTRATOR_TOKEN"},
            "trainer": {"COLLM_AUTH_TOKEN", "COLLM_ADMIN_TOKEN"}}
    for name, envs in want.items():
        env = services[name]["environment"]
        assert set(env) == envs, name
        assert env["COLLM_AUTH_TOKEN"].startswith("${COLLM_AUTH_TOKEN:?"), "the inference token must be required"
    for path, envs in (("k8s/base/agents/helper.yaml", want["helper"]),
                       ("k8s/base/orchestrator.yaml", want["orchestrator"]),
                       ("k8s/base/trainer-job.yaml", want["trainer"])):
        pod = list(yaml.safe_load_all(files[path]))[0]["spec"]["template"]["spec"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod["containers"][0]["env"]}
        assert set(refs) == envs, path
        assert refs["COLLM_AUTH_TOKEN"] == {"name": "collm-auth", "key": "token"}  # not optional
        assert all(r.get("optional") is True for n, r in refs.items() if n != "COLLM_AUTH_TOKEN")
    keys = set(yaml.safe_load_all(files["k8s/secret.example.yaml"]).__next__()["stringData"])
    assert keys == {"token", "admin-token", "orchestrator-token"}


def test_orchestrator_tls_and_identities_reach_the_containers(tmp_path):
    agents = edit(AGENTS, "main: {port: 51002,", "main: {port: 51002, tls: {cert_file: /host/a.crt, "
                  "key_file: /host/a.key, client_ca_file: /host/ca.crt, identities: {admin: [trainer]}},")
    team = TEAM + ("orchestrator_tls: {cert_file: /host/o.crt, key_file: /host/o.key, client_ca_file: /host/ca.crt,"
                   " identities: {inference: [episodes.example]}}\n")
    plan = build_plan(write_team(tmp_path, team, agents))  # the /host files need not exist here
    assert plan.agents_doc["agents"]["main"]["tls"]["identities"] == {"admin": ["trainer"]}
    assert plan.team_doc["orchestrator_tls"] == {
        "cert_file": "/tls/tls.crt", "key_file": "/tls/tls.key", "client_ca_file": "/tls/ca.crt",
        "identities": {"inference": ["episodes.example"]}}
    files = render(plan)
    pod = list(yaml.safe_load_all(files["k8s/base/orchestrator.yaml"]))[0]["spec"]["template"]["spec"]
    probe = pod["containers"][0]["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["collm-healthcheck", "--address", "127.0.0.1:51070"]
    assert "--server-name" in probe and "orchestrator" in probe and "--cert" in probe
    compose = yaml.safe_load(files["compose.yaml"])["services"]["orchestrator"]
    assert "--ca" in compose["healthcheck"]["test"] and "./tls:/tls:ro" in compose["volumes"]


# ---------------------------------------------------------------- rendered files


def test_rendered_files_match_the_team(tmp_path):
    files = render(build_plan(write_team(tmp_path)), RenderOptions(image_gpu="reg.example:5000/c-gpu:7",
                                                                   image_cpu="c-cpu@sha256:" + "a" * 64))
    compose = yaml.safe_load(files["compose.yaml"])["services"]
    assert {n: s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
            for n, s in compose.items() if n not in ("orchestrator",)} == {
        "helper": ["2"], "main": ["0"], "writer-a": ["1"], "trainer": ["${COLLM_TRAINER_GPU:-3}"]}
    assert compose["helper"]["ports"] == ["127.0.0.1:51001:51001", "127.0.0.1:59101:59101"]
    assert compose["orchestrator"]["command"][-1] == "51070"
    assert compose["helper"]["image"] == "reg.example:5000/c-gpu:7" and "build" not in compose["helper"]
    kust = yaml.safe_load(files["k8s/base/kustomization.yaml"])
    assert kust["resources"][2:5] == ["agents/helper.yaml", "agents/main.yaml", "agents/writer-a.yaml"]
    gpu = yaml.safe_load(files["k8s/overlays/gpu/kustomization.yaml"])
    assert gpu["images"] == [{"name": "collm", "newName": "reg.example:5000/c-gpu", "newTag": "7"}]
    cpu = yaml.safe_load(files["k8s/overlays/cpu/kustomization.yaml"])
    assert cpu["images"] == [{"name": "collm", "newName": "c-cpu", "digest": "sha256:" + "a" * 64}]
    dep, svc = yaml.safe_load_all(files["k8s/base/agents/helper.yaml"])
    tmpl = dep["spec"]["template"]
    assert tmpl["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "59101",
                                               "prometheus.io/path": "/metrics"}
    assert [p["port"] for p in svc["spec"]["ports"]] == [51001, 59101]
    orch, orch_svc = yaml.safe_load_all(files["k8s/base/orchestrator.yaml"])
    assert orch["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "51170"
    assert [p["port"] for p in orch_svc["spec"]["ports"]] == [51070, 51170]
    assert compose["orchestrator"]["ports"] == ["127.0.0.1:51070:51070", "127.0.0.1:51170:51170"]
    assert tmpl["spec"]["terminationGracePeriodSeconds"] == 45  # drain_seconds 30 + engine shutdown
    assert all(text.startswith(HEADER_MARK) for text in files.values())


def test_generated_configs_load_with_collm_own_loaders(tmp_path, monkeypatch):
    files = render(build_plan(write_team(tmp_path)))
    out = tmp_path / "out"
    write(files, out)
    monkeypatch.delenv("COLLM_AUTH_TOKEN", raising=False)
    team = load_team_config(out / "config" / "team.yaml")
    assert team.agents["writer_a"].address == "writer-a:51003" and team.auth_token is None
    cfg = load_agent_config("writer_a", out / "config" / "agents.yaml")
    assert (cfg.host, cfg.port, cfg.engine) == ("0.0.0.0", 51003, "transformers")
    assert str(cfg.adapter_root) == "/data/adapters"


def test_shipped_deploy_files_equal_a_fresh_generation(monkeypatch):
    """deploy/compose*.yaml, deploy/config/ and deploy/k8s/ are generator output for deploy/team.yaml."""
    monkeypatch.chdir(REPO)
    plan = build_plan("deploy/team.yaml")
    files = render(plan, RenderOptions(build_context="..", out_label="deploy"))
    stale = differences(files, DEPLOY)
    assert not stale, (f"{stale} differ from the generator; run from the repository root: "
                       "collm-serve deploy-config --team deploy/team.yaml --out deploy")


def test_write_replaces_stale_agent_manifests_only(tmp_path):
    out = tmp_path / "out"
    write(render(build_plan(write_team(tmp_path))), out)
    mine = out / "k8s/base/agents/notes.yaml"
    mine.write_text("kind: mine\n")
    team = edit(TEAM, '  writer_a: {address: "anything:51003", gpu: 1, engine: transformers}\n', "")
    write(render(build_plan(write_team(tmp_path, team))), out)
    assert sorted(p.name for p in (out / "k8s/base/agents").iterdir()) == ["helper.yaml", "main.yaml", "notes.yaml"]


# ---------------------------------------------------------------- CLI


def test_cli_writes_then_checks(tmp_path):
    team, out = write_team(tmp_path), tmp_path / "gen"
    r = CliRunner().invoke(cli, ["deploy-config", "--team", str(team), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote 17 files" in r.stdout and "helper: port 51001 gpu 2" in r.stdout
    assert r.stderr.count("warning: ") == 2
    compose = yaml.safe_load((out / "compose.yaml").read_text())
    assert (out / compose["services"]["helper"]["build"]["context"]).resolve() == REPO  # source checkout
    r = CliRunner().invoke(cli, ["deploy-config", "--team", str(team), "--out", str(out), "--check"])
    assert r.exit_code == 0 and "17 files up to date" in r.stdout
    (out / "k8s/base/agents/main.yaml").write_text("edited\n")
    r = CliRunner().invoke(cli, ["deploy-config", "--team", str(team), "--out", str(out), "--check"])
    assert r.exit_code == 1 and "k8s/base/agents/main.yaml" in r.stderr


def test_cli_error_is_one_line_and_writes_nothing(tmp_path):
    team, out = write_team(tmp_path, edit(TEAM, "gpu: 0}", "gpu: 2}")), tmp_path / "gen"
    r = CliRunner().invoke(cli, ["deploy-config", "--team", str(team), "--out", str(out)])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "GPU 2" in r.stderr
    assert not out.exists()
    r = CliRunner().invoke(cli, ["deploy-config", "--team", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 1 and "cannot read" in r.stderr
