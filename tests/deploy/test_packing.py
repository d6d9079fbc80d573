"""Packed deployment: agents of one engine_group become ONE Compose service / Kubernetes pod on one
GPU (`collm-serve start --engine-group G`), each agent still on its own ports."""

from __future__ import annotations

import pytest
import yaml

from collm_serve.config import ConfigError
from collm_serve.deploy import build_plan, render
from tests.deploy.helpers import AGENTS, TEAM, write_team

PACKED_TEAM = TEAM.replace('gpu: 2}', 'gpu: 0, engine_group: pair}').replace(
    'gpu: 0}', 'gpu: 0, engine_group: pair}')


def test_an_engine_group_is_one_service_on_one_gpu(tmp_path):
    plan = build_plan(write_team(tmp_path, PACKED_TEAM))
    services = {s.dns: [a.name for a in s.agents] for s in plan.services}
    assert services == {"pair": ["helper", "main"], "writer-a": ["writer_a"]}
    assert {n: a["address"] for n, a in plan.team_doc["agents"].items()} == {
        "helper": "pair:51001", "main": "pair:51002", "writer_a": "writer-a:51003"}
    assert plan.agents_doc["agents"]["helper"]["engine_group"] == "pair"
    files = render(plan)
    compose = yaml.safe_load(files["compose.yaml"])["services"]
    assert set(compose) == {"pair", "writer-a", "orchestrator", "trainer"}
    pair = compose["pair"]
    assert pair["command"] == ["start", "--engine-group", "pair", "--config", "/config/agents.yaml"]
    assert pair["ports"] == ["127.0.0.1:51001:51001", "127.0.0.1:59101:59101",
                             "127.0.0.1:51002:51002", "127.0.0.1:51102:51102"]
    assert pair["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]
    assert "51002" in " ".join(pair["healthcheck"]["test"])  # the agent that turns SERVING last
    deployment, service = yaml.safe_load_all(files["k8s/base/agents/pair.yaml"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == pair["command"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["grpc-0", "metrics-0", "grpc-1", "metrics-1"]
    assert container["readinessProbe"]["grpc"]["port"] == 51002
    assert "agents/helper.yaml" not in "".join(files)


@pytest.mark.parametrize("agents_edit, team_edit, message", [
    (("main: {port: 51002", "main: {port: 51002, max_model_len: 4096"), None,
     "agents helper and main cannot share an engine: max_model_len differs"),
    (None, ("gpu: 0, engine_group: pair}", "gpu: 1, engine_group: pair}"),
     "engine group pair run on one GPU but set gpu [0, 1]"),
    (None, ("engine_group: pair}", "engine_group: writer-a}"), "service name 'writer-a' is also that of agent writer_a"),
])
def test_packed_agents_that_cannot_share_fail_in_one_line(tmp_path, agents_edit, team_edit, message):
    agents = AGENTS.replace(*agents_edit) if agents_edit else AGENTS
    team = PACKED_TEAM
    if team_edit:
        head, sep, tail = team.rpartition(team_edit[0])  # the second member (main)
        team = head + team_edit[1] + tail
    with pytest.raises(ConfigError) as e:
        build_plan(write_team(tmp_path, team, agents))
    assert message in str(e.value) and "\n" not in str(e.value)
