"""Team configuration: which task, which agent services (addresses), how they sample, and the
policies the orchestrator applies (timeouts, retries, branching). One pydantic model,
validated once at load; the deployment generator reads the same file so deploy files never
drift from what actually runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collm_serve.addresses import check_address
from collm_serve.config import (
    ConfigError,
    SamplingDefaults,
    TLSConfig,
    auth_policy,
    env_default,
    not_blank,
)
from collm_serve.config_errors import flag_names, format_validation_error, read_yaml_mapping


class TeamAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(description="host:port of the agent service.")
    sampling: SamplingDefaults = Field(
        default_factory=SamplingDefaults, description="What the orchestrator asks this agent for.")
    timeout_s: float = Field(180.0, gt=0, description="Deadline of one generate call.")
    gpu: int | None = Field(None, ge=0, description="GPU id the agent runs on (deployment only).")
    engine: str = Field("vllm", description="Engine of the service (deployment only).")
    model: str | None = Field(None, description="Model of the service (deployment only; default: the agent config's).")
    engine_group: str | None = Field(
        None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
        description="Deployment only (default: the agent config's engine_group): agents with the same group "
                    "run packed in ONE container/pod on one GPU, one engine, each on its own port "
                    "(collm_serve/agent/packing.py).")

    _address = field_validator("address")(lambda v: check_address(v, "address"))  # bare host -> 443


# an optional bearer token; a blank one is refused (omit the key to have none)
Token = Annotated[str | None, AfterValidator(lambda v, info: not_blank(info.field_name, v))]


def token_field(env: str, description: str) -> Any:
    """A token setting (type `Token`) that environment variable `env` fills when the file and the
    flags leave it unset (`team_env_defaults`), so a token need not be written in a file. `env`
    is named once, here: the description says it and `TOKEN_ENV` is read from it."""
    return Field(None, description=f"{description} Env: {env}.", json_schema_extra={"env": env})


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(3, ge=1, description="Tries per agent call (UNAVAILABLE / DEADLINE_EXCEEDED).")
    backoff_s: float = Field(0.5, ge=0, description="First back-off; doubles each retry.")


class TeamConfig(BaseModel):
    """A team of agents on one task; agent order is the task's agent order."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="coding | writing | build | toy")
    task_options: dict = Field(default_factory=dict, description="Passed to the task's constructor.")
    agents: dict[str, TeamAgent] = Field(description="Agent name -> service address and sampling.")
    turns: int | None = Field(None, gt=0, description="Override the task's number of turns.")
    group_size: int = Field(1, ge=1, le=16, description="K samples per agent per node (MC baselines).")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    traces: str = Field("runs/traces.db", description="Trace store path or sqlite:/// URL.")
    orchestrator_host: str = Field("127.0.0.1")
    orchestrator_port: int = Field(50070, ge=0, le=65535)
    orchestrator_metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Prometheus port of `collm-serve orchestrate` (episodes, failures, turn latency, reward); "
                    "None = off, 0 = any free.")
    auth_token: Token = token_field(
        "COLLM_AUTH_TOKEN", "The agents' inference token: what the orchestrator and collectors present.")
    admin_token: Token = token_field(
        "COLLM_ADMIN_TOKEN", "The agents' admin token: what the trainer's push presents to load and activate "
                             "adapters (unset = auth_token, for single-token agents).")
    ca_file: Path | None = Field(None, description="CA of the agents' TLS certificates.")
    client_cert_file: Path | None = Field(None, description="Client certificate for the agents' mTLS.")
    client_key_file: Path | None = None
    orchestrator_token: Token = token_field(
        "COLLM_ORCHESTRATOR_TOKEN", "Bearer token OrchestratorService callers must send (unset = auth_token, "
                                    "so a team with agent auth never serves episodes openly).")
    orchestrator_tls: TLSConfig | None = Field(
        None, description="The orchestrator's own server TLS/mTLS: cert_file, key_file, client_ca_file, "
                          "identities (same keys as an agent's tls).")
    agents_config: Path | None = Field(None, description="Agents YAML the services run with (deployment).")
    seed: int = Field(0, ge=0, description="Base seed; episode i uses seed + i.")

    @model_validator(mode="after")
    def _check(self) -> "TeamConfig":
        if not self.agents:
            raise ValueError("agents: at least one agent is required")
        return self

    @property
    def push_token(self) -> str | None:
        """What the trainer's push presents: the admin token, else the single agent token."""
        return self.admin_token or self.auth_token

    @property
    def orchestrator_auth(self):
        """Who may call OrchestratorService (collm_serve.auth.AuthPolicy)."""
        return auth_policy(self.orchestrator_token or self.auth_token, None, self.orchestrator_tls)


# field -> its environment variable, as `token_field` recorded it
TOKEN_ENV = {name: f.json_schema_extra["env"] for name, f in TeamConfig.model_fields.items()
             if f.json_schema_extra and "env" in f.json_schema_extra}


def team_env_defaults(raw: dict) -> None:
    """Tokens the file and the flags leave unset come from the environment (`TOKEN_ENV`)."""
    for key, env in TOKEN_ENV.items():
        env_default(raw, key, env)


def load_team_config(path: str | os.PathLike[str], *, check_files: bool = True, **overrides) -> TeamConfig:
    """Validate a team file; `overrides` (CLI flags) win over it, then env vars fill what is unset.
    `check_files=False` skips the existence of TLS files (the deploy generator: container paths)."""
    source = str(path)
    raw = read_yaml_mapping(path, "team", error=ConfigError)
    for key, value in overrides.items():
        if value is None:
            continue
        # a section (orchestrator_tls) from flags completes the file's instead of replacing it
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    team_env_defaults(raw)
    try:
        return TeamConfig.model_validate(raw, context={"check_files": check_files})
    except ValidationError as e:
        flags = flag_names([k for k, v in overrides.items() if v is not None])
        raise ConfigError(format_validation_error(source, e, TeamConfig, flags=flags)) from e
