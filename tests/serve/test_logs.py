"""`collm-serve --log-level/--log-format` (collm_serve/logs.py): JSON log lines parse, levels filter."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from collm_serve.cli import main
from collm_serve.logs import JSONFormatter, configure_logging


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_format_is_one_object_per_line_and_level_filters(capsys):
    configure_logging("warning", "json")
    log = logging.getLogger("collm.test")
    log.info("hidden")
    log.warning("shown %d", 1)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in lines] == [
        ("warning", "collm.test", "shown 1"), ("error", "collm.test", "failed")]
    assert "ValueError: boom" in lines[1]["exc"] and lines[0]["ts"].endswith("Z")


def ours(root: logging.Logger) -> logging.Handler:
    (handler,) = [h for h in root.handlers if getattr(h, "collm", False)]
    return handler


def test_cli_flags_and_env_configure_the_root_logger(monkeypatch):
    result = CliRunner().invoke(main, ["--log-level", "debug", "--log-format", "json", "deploy-config", "--help"])
    assert result.exit_code == 0, result.output
    root = logging.getLogger()
    assert root.level == logging.DEBUG and isinstance(ours(root).formatter, JSONFormatter)
    monkeypatch.setenv("COLLM_LOG_LEVEL", "error")
    assert CliRunner().invoke(main, ["deploy-config", "--help"]).exit_code == 0
    assert root.level == logging.ERROR and not isinstance(ours(root).formatter, JSONFormatter)
    bad = CliRunner().invoke(main, ["--log-level", "loud", "deploy-config", "--help"])
    assert bad.exit_code == 2 and "--log-level" in bad.output
