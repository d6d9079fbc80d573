"""`collm-serve collect` / `orchestrate` argument handling (the runs themselves are in
test_faults.py and test_service.py, as subprocesses)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from collm_serve.cli import main
from collm_serve.config import ConfigError
from collm_serve.orchestrator import default_team
from collm_serve.orchestrator.teams import build_task
from collm_serve.team import TeamConfig
from tests.orchestrator.conftest import make_team, write_team


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_collect_needs_a_team_or_a_task():
    r = run("collect", "--episodes", "1")
    assert r.exit_code == 1 and "pass --team team.yaml, or --task" in r.output


def test_default_team_uses_the_builtin_agent_ports():
    team = default_team("build", seed=3)
    assert {n: a.address for n, a in team.agents.items()} == {
        "builder_a": "localhost:50065", "builder_b": "localhost:50066"}
    assert team.seed == 3 and build_task(team).num_turns == 4


def test_team_agents_must_match_the_task(tmp_path):
    team_file = write_team(tmp_path / "team.yaml", make_team("coding", ["a:1", "b:2"], tmp_path / "t.db"))
    r = run("collect", "--team", str(team_file), "--task", "writing", "--episodes", "1")
    assert r.exit_code == 1
    assert "task 'writing' has agents ['writer_a', 'writer_b']; the team lacks" in r.output
    assert not (tmp_path / "t.db").exists()


def test_oversized_tree_is_a_usage_error(tmp_path):
    team_file = write_team(tmp_path / "team.yaml", make_team("build", ["a:1", "b:2"], tmp_path / "t.db"))
    r = run("collect", "--team", str(team_file), "--group-size", "8", "--episodes", "1")
    assert r.exit_code == 1 and "above max_tree_turns=1024" in r.output
    r = run("collect", "--team", str(team_file), "--group-size", "17")
    assert r.exit_code == 2


def test_turns_override():
    team = TeamConfig(task="coding", turns=3, agents={"helper": {"address": "a:1"}, "main": {"address": "b:2"}})
    assert build_task(team).num_turns == 3
    with pytest.raises(ConfigError, match="always plays 1 turn"):
        build_task(team.model_copy(update={"task": "toy"}))


def test_help_lists_the_commands():
    r = run("--help")
    assert "collect" in r.output and "orchestrate" in r.output
