"""Team configuration: which task, which agent services (addresses), how they sample, and the
policies the orchestrator applies (timeouts, retries, branching). One pydantic model,
validated once at load; the deployment generator reads the same file so deploy files never
drift from what actually runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collm_serve.addresses import check_address
from collm_serve.config import ConfigError


class AgentSampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(256, gt=0, description="Completion budget per turn.")
    temperature: float = Field(0.7, ge=0, description="Paper: 0.6-0.7.")
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(0, ge=0)


class TeamAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(description="host:port of the agent service.")
    sampling: AgentSampling = Field(default_factory=AgentSampling)
    timeout_s: float = Field(180.0, gt=0, description="Deadline of one generate call.")
    gpu: int | None = Field(None, ge=0, description="GPU id the agent runs on (deployment only).")
    engine: str = Field("vllm", description="Engine of the service (deployment only).")
    model: str | None = Field(None, description="Model of the service (deployment only; default: the agent config's).")

    _address = field_validator("address")(lambda v: check_address(v, "address"))  # bare host -> 443


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
    auth_token: str | None = Field(None, description="Bearer token for the agents (env COLLM_AUTH_TOKEN).")
    ca_file: Path | None = Field(None, description="CA of the agents' TLS certificates.")
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    agents_config: Path | None = Field(None, description="Agents YAML the services run with (deployment).")
    seed: int = Field(0, ge=0, description="Base seed; episode i uses seed + i.")

    @model_validator(mode="after")
    def _check(self) -> "TeamConfig":
        if not self.agents:
            raise ValueError("agents: at least one agent is required")
        return self


def load_team_config(path: str | os.PathLike[str], **overrides) -> TeamConfig:
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{source}: cannot read ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if raw.get("auth_token") is None and os.environ.get("COLLM_AUTH_TOKEN"):
        raw["auth_token"] = os.environ["COLLM_AUTH_TOKEN"]
    try:
        return TeamConfig(**raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{source}: {loc}: {first['msg']}") from e
