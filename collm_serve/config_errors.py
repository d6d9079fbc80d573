"""One formatter for every pydantic validation error (agent files, team files, train configs,
and the HTTP API's request bodies, which report the first problem with `first_error`).

Pydantic stops at nothing: `ValidationError.errors()` holds every problem of one model. All of
them are shown at once, one line each, so a user fixes a file in one pass, not one key per run:

    team.yaml: 2 problems:
      agent: unknown key; did you mean 'agents'?
      agents: required

A misspelled key gets the closest allowed key at that place in the model (difflib, as
argparse / click do for options). A value that came from a command-line flag is blamed on the
flag (`--port: must be <= 65535`), not on the file the other values came from.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


def suggest(word: str, choices: Sequence[str]) -> str:
    """`; did you mean 'x'?` for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional / Union / Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [t for a in typing.get_args(annotation) for t in _unwrap(a)]
    return [annotation]


def _keys_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> list[str]:
    """The field names allowed at `loc` (a path into `model`), or [] when unknown.

    Walks sub-models and `dict[str, Model]` values (whose key is one loc element)."""
    candidates: list[Any] = [model] if model is not None else []
    for part in loc:
        nxt: list[Any] = []
        for t in candidates:
            if isinstance(t, type) and issubclass(t, BaseModel):
                field = t.model_fields.get(str(part))
                if field is not None:
                    nxt += _unwrap(field.annotation)
            elif typing.get_origin(t) in (dict, Mapping):
                nxt += _unwrap(typing.get_args(t)[1]) if len(typing.get_args(t)) == 2 else []
        candidates = nxt
    for t in candidates:
        if isinstance(t, type) and issubclass(t, BaseModel):
            return list(t.model_fields)
    return []


def _message(err: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden" and loc:
        return f"unknown key{suggest(loc[-1], _keys_at(model, loc[:-1]))}"
    if kind == "missing":
        return "required"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return msg


def _ordered(err: ValidationError) -> list[Mapping[str, Any]]:
    # unknown keys first: a misspelled key usually explains the "required" that follows
    return sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")


def first_error(err: ValidationError, model: type[BaseModel] | None = None) -> tuple[str, str, str]:
    """(dotted location, message, pydantic type) of the problem to report when only one fits
    (an HTTP 400 names one `param`); the same wording as `error_lines`."""
    e = _ordered(err)[0]
    return ".".join(str(p) for p in e["loc"]), _message(e, model), e["type"]


def error_lines(err: ValidationError, model: type[BaseModel] | None = None, *, loc_prefix: str = "",
                flags: Mapping[str, str] | None = None) -> list[str]:
    """One `where: what` line per problem. `flags`: top-level field -> the flag that set it."""
    lines = []
    for e in _ordered(err):
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc)
        if flags and loc and str(loc[0]) in flags:
            where = flags[str(loc[0])] + (f" ({dotted})" if len(loc) > 1 else "")
        else:
            where = ".".join(filter(None, [loc_prefix, dotted]))
        msg = _message(e, model)
        line = f"{where}: {msg}" if where else msg
        if line not in lines:
            lines.append(line)
    return lines


def format_validation_error(source: str, err: ValidationError, model: type[BaseModel] | None = None, *,
                            loc_prefix: str = "", flags: Mapping[str, str] | None = None) -> str:
    """`source: where: what` for one problem; `source: N problems:` and one indented line each
    for more. Lines blamed on a flag drop `source` (the flag is not in the file)."""
    lines = error_lines(err, model, loc_prefix=loc_prefix, flags=flags)
    flagged = {f for f in (flags or {}).values()}

    def on_flag(line: str) -> bool:
        return any(line.startswith(f + ":") or line.startswith(f + " (") for f in flagged)

    if len(lines) == 1:
        return lines[0] if on_flag(lines[0]) else f"{source}: {lines[0]}"
    return f"{source}: {len(lines)} problems:\n" + "\n".join(f"  {ln}" for ln in lines)


def flag_names(keys: Sequence[str]) -> dict[str, str]:
    """Field name -> its command-line flag (`max_tokens` -> `--max-tokens`)."""
    return {k: "--" + k.replace("_", "-") for k in keys}


def read_yaml_mapping(path: str | Path, what: str = "config", *, error: type[Exception] = ValueError) -> dict:
    """A YAML file whose top level is a mapping (empty file -> {}); one-line `error` otherwise."""
    import yaml

    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise error(f"{source}: cannot read ({e.strerror or e})") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{source}: not valid YAML{where} ({problem}); fix the file, e.g. check indentation "
                    "and quote values that contain ': '") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{source}: the top level is a {type(raw).__name__}, expected a mapping of "
                    f"{what} keys (key: value, not '- item')")
    return raw
