"""Logging set-up of the collm-serve processes: `--log-level` and an optional JSON line format
(one object per record: ts, level, logger, message, exc) that log collectors parse without rules.
Life-cycle events stay the JSON lines `server.announce` prints on stdout; logs go to stderr —
vLLM's too, including its engine core's traceback when it dies (vLLM logs to stdout unless
`VLLM_LOGGING_STREAM` says otherwise; its engine processes inherit the variable)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Our root handler on stderr; replaces the one an earlier call installed."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level must be one of {LEVELS} and format one of {FORMATS}")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # read when vLLM is imported
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.collm = True  # ours: replaced on the next call; others' handlers (pytest's caplog) stay
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "collm", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
