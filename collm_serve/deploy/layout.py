"""Inside the containers: the paths, volumes, tokens and health check every generated file agrees on.

Its own module because the plan (which rewrites the configs to these paths) and both renderers
(Compose, Kubernetes) must follow one contract; each imports it from here instead of from another.
COLLM_HOME=/data (models, adapters, state, runs are volumes below it), configs at /config, TLS files
at /tls, tokens from the environment only (`TOKEN_ENV`) — a token found in a config file is never
copied into generated files. Every service has a door: the agents' inference token COLLM_AUTH_TOKEN
is required (Compose refuses to start without it, the Kubernetes Secret key `token` is not
optional); the admin token (COLLM_ADMIN_TOKEN: agents and trainer) and the orchestrator's own token
(COLLM_ORCHESTRATOR_TOKEN, else the inference token) are optional. Each container gets only the
tokens its role needs: the orchestrator never sees the admin token. Roles: collm_serve/auth.py.
"""

from __future__ import annotations

from typing import Literal

Backend = Literal["all", "gpu", "cpu"]
AGENT_SERVICE = "collm.v1.AgentService"  # health service name; AgentService SERVING = engine up
DATA = "/data"
VOLUMES = {"models": f"{DATA}/models", "adapters": f"{DATA}/adapters", "state": f"{DATA}/state",
           "runs": f"{DATA}/runs"}
SHM_SIZE = "2gb"  # vLLM worker processes exchange tensors through /dev/shm (Docker's default is 64 MB)
TLS_DIR = "/tls"
# Env var -> (Secret key, required): the tokens; which container gets which: `_TOKENS_OF`.
TOKEN_ENV = {"COLLM_AUTH_TOKEN": ("token", True), "COLLM_ADMIN_TOKEN": ("admin-token", False),
             "COLLM_ORCHESTRATOR_TOKEN": ("orchestrator-token", False)}
_TOKENS_OF = {"agent": ("COLLM_AUTH_TOKEN", "COLLM_ADMIN_TOKEN"),
              "orchestrator": ("COLLM_AUTH_TOKEN", "COLLM_ORCHESTRATOR_TOKEN"),
              "trainer": ("COLLM_AUTH_TOKEN", "COLLM_ADMIN_TOKEN")}


def _healthcheck_cmd(port: int, service: str, tls: bool = False, mtls: bool = False,
                     server_name: str | None = None) -> list[str]:
    """The image's checker: the Compose healthcheck, and the Kubernetes probe under TLS (no native one)."""
    cmd = ["collm-healthcheck", "--address", f"127.0.0.1:{port}", "--service", service]
    if tls:
        cmd += ["--ca", f"{TLS_DIR}/ca.crt", "--server-name", server_name or "localhost"]
    if mtls:
        cmd += ["--cert", f"{TLS_DIR}/client.crt", "--key", f"{TLS_DIR}/client.key"]
    return cmd
