"""Engines behind one interface (`base.Engine`), loaded lazily by name: importing this package
costs nothing; the heavy import (vLLM or torch) happens in `create_engine`."""

from __future__ import annotations

from importlib import import_module

from collm_serve.engines.base import Engine

ENGINES = {
    "vllm": "collm_serve.engines.vllm_engine:VLLMEngine",
    "transformers": "collm_serve.engines.transformers_engine:TransformersEngine",
}


def create_engine(name: str, *args, **kwargs) -> Engine:
    try:
        target = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}") from None
    module, cls = target.split(":")
    return getattr(import_module(module), cls)(*args, **kwargs)
