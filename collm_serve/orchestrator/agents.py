"""The team's agent services as seen by the orchestrator: one async client per agent, the
team's retry policy, and adapter pinning for multi-turn episodes.

Retries: only UNAVAILABLE (the service is down, draining or unreachable) and DEADLINE_EXCEEDED
(the call outlived the agent's `timeout_s`) are retried, `retry.attempts` tries in all with
exponential back-off. A deadline-exceeded request is aborted on the service first (best
effort) so a retry does not leave the first attempt burning engine time. The client SDK's own
UNAVAILABLE retry is switched off so there is one policy, the team's. Anything else (bad
request, unauthenticated, ...) is not transient and fails the call at once. A call that gives
up raises `AgentCallError`; the episode runner stores the episode as failed with its message.

Pinning (docs/design.md, "Wire contract"): the adapter version that served an agent's first turn is
pinned for the rest of the episode (`adapter_version=v`, or `use_base_model` when the base
model served it), so an episode finishes on the policy it started with even if the trainer
activates a newer version meanwhile. If the pinned version was evicted (NOT_FOUND), the call
falls back to the active version once, the new version becomes the pin, and the reply says so
(`pin_fallback`), which the runner records in the turn's info.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from collm_serve.client import (
    AdapterRef,
    AgentError,
    AsyncAgentClient,
    DeadlineExceededError,
    EngineDeadError,
    FailedPreconditionError,
    GenerateOutput,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from collm_serve.team import TeamConfig
from collm_serve.traces.records import SamplingRecord

RETRYABLE = (UnavailableError, DeadlineExceededError)
ABORT_TIMEOUT_S = 5.0
DEFAULT_MAX_IN_FLIGHT = 8  # requests per agent service at once (its admission queue is larger)


def fix_for(error: AgentError, agent: str, address: str) -> str:
    """What a user does about a failed agent call, by the error's type (one status, one fix)."""
    if isinstance(error, EngineDeadError):
        return (f"the engine of agent {agent} died and the agent exited with code 3 ('restart me'): "
                "run agents under a supervisor that restarts them (the generated Compose files: "
                "restart: unless-stopped; Kubernetes restarts the container); vLLM's traceback is "
                "in the agent's log")
    if isinstance(error, UnavailableError):
        return (f"start the agent (collm-serve start --agent {agent}) or correct its address "
                f"{address} in the team file")
    if isinstance(error, (UnauthenticatedError, PermissionDeniedError)):
        return "give the team the agent's token (team file auth_token or env COLLM_AUTH_TOKEN)"
    if isinstance(error, DeadlineExceededError):
        return f"raise agents.{agent}.timeout_s in the team file or lower its sampling.max_tokens"
    if isinstance(error, ResourceExhaustedError):
        return "lower --concurrency, or raise the agent's max_queued_requests"
    if isinstance(error, InvalidArgumentError):
        return (f"fit the team's sampling for {agent} to the agent's limits "
                "(collm-serve info --address ... shows them)")
    if isinstance(error, (NotFoundError, FailedPreconditionError)):
        return f"check the agent's adapters (collm-serve adapters --address {address})"
    return f"see the agent's log ({agent} at {address})"


class AgentCallError(RuntimeError):
    """An agent call failed for good (retries exhausted, or a non-transient status).

    `fix` names what the user can do about it (`fix_for`); `collect` prints it when every
    episode fails."""

    def __init__(self, agent: str, address: str, attempts: int, error: AgentError,
                 cause: AgentError | None = None):
        """`cause`: an earlier attempt's error that explains the last one (the agent's engine
        died; the attempts after it only found the agent gone)."""
        self.agent, self.address, self.attempts, self.error = agent, address, attempts, error
        self.cause = cause
        self.fix = fix_for(cause or error, agent, address)
        tries = f" after {attempts} attempt{'s' * (attempts > 1)}" if isinstance(error, RETRYABLE) else ""
        first = f"engine died ({cause.details}); then " if cause is not None and cause is not error else ""
        super().__init__(f"agent {agent} ({address}): {first}{error.code.name}{tries}: {error.details}")


@dataclass
class AgentReply:
    """One agent's answer at one node: `output.choices[k]` is its action on branch k."""

    agent: str
    output: GenerateOutput
    selector: dict[str, Any]  # the adapter pin the successful attempt sent ({} = active)
    latency_ms: float  # wall time of the successful attempt
    attempts: int = 1
    pin_fallback: str = ""  # set when the pinned version was gone and the active one served

    @property
    def sampling(self) -> SamplingRecord | None:
        """What the service ACTUALLY sampled with (its echo), recorded with every action; not
        the request (`AgentPool.sampling`), whose unset fields the service fills from its own
        defaults. None only from a service older than the echo."""
        return self.output.sampling


@dataclass
class AdapterPins:
    """Per episode: agent -> the adapter that served its first turn (None until then)."""

    pins: dict[str, AdapterRef | None] = field(default_factory=dict)

    def selector(self, agent: str) -> dict[str, Any]:
        pin = self.pins.get(agent)
        if pin is None:
            return {}
        return {"use_base_model": True} if pin.is_base else {"adapter_version": pin.version}

    def observe(self, agent: str, served: AdapterRef, *, replace: bool = False) -> None:
        if replace or self.pins.get(agent) is None:
            self.pins[agent] = served


class AgentPool:
    """Async clients of the team's agents; `act` is one (retried) generate call."""

    def __init__(self, team: TeamConfig, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT):
        self.team = team
        self.clients = {
            name: AsyncAgentClient(
                spec.address, timeout=spec.timeout_s, retries=0, token=team.auth_token,
                root_certificates=team.ca_file, client_cert=team.client_cert_file,
                client_key=team.client_key_file,
            )
            for name, spec in team.agents.items()
        }
        # Bounds one collector's load on each service (branching nodes and concurrent episodes
        # share it); an agent's slot is never held while backing off.
        self._slots = {name: asyncio.Semaphore(max_in_flight) for name in team.agents}

    async def aclose(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)

    async def __aenter__(self) -> AgentPool:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def sampling(self, agent: str, n: int, seed: int) -> dict[str, Any]:
        """The sampling fields asked of `agent` (its team `sampling:`, this node's n and seed)."""
        s = self.team.agents[agent].sampling
        return {"max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p,
                "top_k": s.top_k, "seed": seed, "n": n}

    async def act(
        self, agent: str, messages: list[dict[str, str]], *, n: int, seed: int,
        pins: AdapterPins | None = None, request_id: str,
    ) -> AgentReply:
        spec = self.team.agents[agent]
        client = self.clients[agent]
        policy = self.team.retry
        sampling = self.sampling(agent, n, seed)
        selector = pins.selector(agent) if pins is not None else {}
        fallback = ""
        attempt = 0
        engine_death: EngineDeadError | None = None  # the cause of the UNAVAILABLEs that follow it
        while True:
            rid = f"{request_id}.{attempt}" + (".f" if fallback else "")
            error: AgentError
            async with self._slots[agent]:
                started = time.perf_counter()
                try:
                    out = await client.generate(messages=messages, timeout=spec.timeout_s,
                                                request_id=rid, **sampling, **selector)
                except NotFoundError as e:
                    if "adapter_version" not in selector or fallback:
                        raise AgentCallError(agent, spec.address, attempt + 1, e) from None
                    fallback = (f"pinned adapter version {selector['adapter_version']} is no longer "
                                f"loaded ({e.details}); fell back to the active version")
                    selector = {}
                    continue  # not a failed attempt: the service answered
                except AgentError as e:
                    if isinstance(e, DeadlineExceededError):
                        await self._abort(client, rid)
                    if isinstance(e, EngineDeadError) and engine_death is None:
                        engine_death = e
                    error = e
                else:
                    latency_ms = (time.perf_counter() - started) * 1000
                    if pins is not None:
                        pins.observe(agent, out.adapter, replace=bool(fallback))
                    return AgentReply(agent, out, dict(selector), latency_ms,
                                      attempts=attempt + 1, pin_fallback=fallback)
            attempt += 1
            if not isinstance(error, RETRYABLE) or attempt >= policy.attempts:
                raise AgentCallError(agent, spec.address, attempt, error, engine_death) from None
            await asyncio.sleep(policy.backoff_s * 2 ** (attempt - 1))

    @staticmethod
    async def _abort(client: AsyncAgentClient, request_id: str) -> None:
        try:
            await asyncio.wait_for(client.abort([request_id]), ABORT_TIMEOUT_S)
        except (AgentError, TimeoutError):  # best effort: the service may be what is stuck
            pass
