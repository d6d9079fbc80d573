"""Fixtures: the folders of deploy files under test, shipped (deploy/) and freshly generated."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from collm_serve.cli import main as cli
from tests.deploy.helpers import DEPLOY, write_team


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory) -> Path:
    """`collm-serve deploy-config` output for the three-agent test team, written by the real CLI."""
    src = tmp_path_factory.mktemp("team")
    out = tmp_path_factory.mktemp("generated")
    result = CliRunner().invoke(cli, ["deploy-config", "--team", str(write_team(src)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(params=["shipped", "generated"])
def deploy_root(request, generated_root) -> Path:
    return DEPLOY if request.param == "shipped" else generated_root
