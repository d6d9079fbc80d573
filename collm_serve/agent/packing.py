"""Packing: several agents served by ONE engine (one copy of the base model) in one process.

Each packed agent keeps everything that makes it an agent: its own gRPC port, health, auth,
metrics (labels and port), adapter registry, versions, rollback and state dir. What they share
is the engine, so they must agree on every setting that shapes it (`ENGINE_FIELDS`), and the
engine's LoRA slots are the sum of theirs (`lora_slots`). Isolation between the agents (a
request only ever runs on its own agent's adapter) is `engines/shared.py` `AgentEngineView`.

Which agents share an engine: `engine_group` in the agents config (`collm-serve start
--engine-group NAME`), or an explicit `collm-serve start --agents a,b`. Separate processes (one
engine, one GPU per agent) stay the default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collm_serve.config import AgentConfig, ConfigError, load_agent_config, load_agents_file

# Settings of the ONE engine (and of the process it runs in) that packed agents share.
ENGINE_FIELDS = (
    "engine", "model", "max_model_len", "max_lora_rank", "dtype", "kv_cache_bytes", "gpu_memory_utilization",
    "tensor_parallel_size", "quantization", "max_num_seqs", "enable_prefix_caching", "seed", "cpu_threads",
    "cpu_affinity",
)
# Per-agent ports that must not collide inside one process (0 = any free, never a collision).
_PORT_FIELDS = ("port", "metrics_port", "http_port")


def lora_slots(configs: Sequence[AgentConfig]) -> int:
    """The engine's `max_loras`: every packed agent's `adapter_slots` (keep_versions + swap_slots),
    so that all their loaded versions stay resident at once, as on an engine of their own."""
    return sum(c.adapter_slots for c in configs)


def check_packable(configs: Sequence[AgentConfig]) -> None:
    """Refuse agents that cannot share one engine, naming the field that differs."""
    if not configs:
        raise ConfigError("no agents to start")
    names = [c.name for c in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"agent {dup[0]} is listed twice; list each packed agent once")
    first = configs[0]
    for other in configs[1:]:
        for name in ENGINE_FIELDS:
            a, b = getattr(first, name), getattr(other, name)
            if a != b:
                raise ConfigError(
                    f"agents {first.name} and {other.name} cannot share an engine: {name} differs "
                    f"({a!r} vs {b!r}); give every packed agent the same {name}, or run them separately")
    seen: dict[Path, str] = {}
    for c in configs:
        state = c.resolved_state_dir
        if state in seen:
            raise ConfigError(f"agents {seen[state]} and {c.name}: state_dir {state} is shared; each packed agent "
                              "records its active adapter in its own state_dir")
        seen[state] = c.name
    ports: dict[int, str] = {}
    for c in configs:
        for name in _PORT_FIELDS:
            port = getattr(c, name)
            if not port:
                continue
            if port in ports:
                raise ConfigError(f"agents.{c.name}.{name}: port {port} is also {ports[port]} in the same process; "
                                  "give every packed endpoint its own port (0 = any free)")
            ports[port] = f"{c.name}.{name}"


def group_members(group: str, path: str | os.PathLike[str] | None = None) -> list[str]:
    """The agents of `engine_group: group` in an agents file, in file order."""
    agents, source = load_agents_file(path)
    members = [name for name, settings in agents.items() if settings.get("engine_group") == group]
    if not members:
        groups = sorted({s["engine_group"] for s in agents.values() if s.get("engine_group")})
        raise ConfigError(f"{source}: no agent has engine_group {group!r} "
                          f"(groups: {', '.join(groups) if groups else 'none; set engine_group on the agents to pack'})")
    return members


def load_packed_configs(
    names: Sequence[str], path: str | os.PathLike[str] | None = None, **overrides: Any
) -> list[AgentConfig]:
    """Validate the configs of agents started in one process; CLI overrides apply to each.

    With several agents a fixed `port`/`metrics_port`/`http_port` flag cannot be everybody's
    (only 0 = any free is), and `state_dir` is a parent folder: agent X records in `<dir>/X`.
    """
    if len(names) > 1:
        for flag in _PORT_FIELDS:
            if overrides.get(flag):
                raise ConfigError(f"--{flag.replace('_', '-')} {overrides[flag]} cannot be the port of every packed "
                                  f"agent; set {flag} per agent in the config, or pass 0 (any free)")
    configs = []
    for name in names:
        own = dict(overrides)
        if len(names) > 1 and own.get("state_dir") is not None:
            own["state_dir"] = str(Path(own["state_dir"]) / name)
        configs.append(load_agent_config(name, path, **own))
    check_packable(configs)
    return configs
