"""Change the active adapter of every agent of a team — all or none.

The agents of a team act on each other's outputs, so a team half on v3 and half on v2 runs a
joint policy nobody trained. `swap`, `activate` and `rollback --team` (collm_serve/cli.py) and
the trainer's push (collm_train/push.py) all go through `change_team`:

1. Read every agent's active version; an unreachable agent stops everything before any change.
2. `prepare` (swap and push: LoadAdapter WITHOUT activating — the expensive, fallible part, where
   each agent verifies files, sha256, base model, rank, target modules). A refusal stops here:
   no active version changed (the versions loaded so far stay loaded, inactive).
3. `change` each agent in team order. If one fails, `put_back` re-activates the previous
   version on every agent already changed, and the error reports each agent's outcome.
4. Read back each agent's active version and sha256 and compare with what its change answered:
   a mismatch (another operator in between) is a loud failure, not a silent mix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from collm_serve.client import AdapterRef, AgentClient, AgentError
from collm_serve.proto.collm.v1 import agent_pb2 as pb

CHANGED, UNCHANGED, FAILED, PUT_BACK, PUT_BACK_FAILED, NOT_TRIED = (
    "changed", "unchanged", "failed", "put back", "put back failed", "not tried")


@dataclass
class AgentChange:
    """One agent's outcome: active version before and after, and what happened."""

    agent: str
    address: str
    before: AdapterRef | None = None
    after: AdapterRef | None = None
    status: str = NOT_TRIED
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        ref = lambda r: "?" if r is None else ("base" if r.is_base else f"v{r.version}")  # noqa: E731
        line = f"{self.agent} ({self.address}): {ref(self.before)} -> {ref(self.after)} {self.status}"
        if self.after is not None and not self.after.is_base:
            line += f" sha256={self.after.sha256[:16]}…"
        return line + (f": {self.error}" if self.error else "")


class TeamChangeError(RuntimeError):
    """The team is back where it was (or `changes` says which agent could not be put back)."""

    def __init__(self, message: str, changes: list[AgentChange]):
        super().__init__(message)
        self.changes = changes


Change = Callable[[str, AgentClient], pb.AdapterRef]  # (agent, client) -> the new active ref


def put_back(changed: list[AgentChange], clients: Mapping[str, AgentClient]) -> None:
    """Re-activate each changed agent's previous version (the all-or-none step)."""
    for ch in changed:
        if ch.status != CHANGED or ch.before is None:
            continue
        base = ch.before.is_base
        try:
            r = clients[ch.agent].activate_adapter(None if base else ch.before.version, use_base_model=base)
        except AgentError as e:
            ch.status, ch.error = PUT_BACK_FAILED, f"could not re-activate {ch.before}: {e}"
            continue
        ch.after, ch.status = AdapterRef.from_pb(r.active), PUT_BACK


def change_team(
    clients: Mapping[str, AgentClient],
    change: Change,
    *,
    prepare: Callable[[str, AgentClient], None] | None = None,
) -> list[AgentChange]:
    """Apply `change` to every agent (dict order = team order) all or none; see the module doc.

    Raises TeamChangeError (with every agent's `AgentChange`) when the team did not move.
    """
    changes = {a: AgentChange(a, c.address) for a, c in clients.items()}

    def fail(message: str):
        stuck = [c.agent for c in changes.values() if c.status == PUT_BACK_FAILED]
        if stuck:
            message += f"; COULD NOT PUT BACK {', '.join(stuck)}: the team runs mixed versions"
        raise TeamChangeError(message, list(changes.values()))

    for agent, c in clients.items():
        try:
            changes[agent].before = AdapterRef.from_pb(c.info().active_adapter)
        except AgentError as e:
            changes[agent].status, changes[agent].error = FAILED, str(e)
            fail(f"{agent} ({c.address}) did not answer: {e}; nothing changed")
    if prepare is not None:
        for agent, c in clients.items():
            try:
                prepare(agent, c)
            except AgentError as e:
                changes[agent].status, changes[agent].error = FAILED, str(e)
                fail(f"{agent} refused: {e}; no active version changed")
    done: list[AgentChange] = []
    for agent, c in clients.items():
        ch = changes[agent]
        try:
            ch.after = AdapterRef.from_pb(change(agent, c))
        except AgentError as e:
            ch.status, ch.error = FAILED, str(e)
            put_back(done, clients)
            fail(f"{agent} failed: {e}; " + ("agents changed before it were put back" if done else "nothing changed"))
        ch.status = UNCHANGED if ch.after == ch.before else CHANGED
        done.append(ch)
    for agent, c in clients.items():
        ch = changes[agent]
        try:
            now = AdapterRef.from_pb(c.info().active_adapter)
        except AgentError as e:
            ch.status, ch.error = FAILED, f"active version unknown after the change: {e}"
            fail(f"{agent} did not confirm its active version: {e}")
        if now != ch.after:
            ch.status, ch.error = FAILED, f"reports {now}, the change answered {ch.after}"
            fail(f"{agent} reports {now} after the change answered {ch.after} (changed by someone else?)")
    return list(changes.values())


# -- the three team operations -----------------------------------------------------------------


def swap_team(clients: Mapping[str, AgentClient], paths: Mapping[str, str], version: int) -> list[AgentChange]:
    """Load version `version` on every agent (from `paths[agent]`), then activate it everywhere."""

    def load(agent: str, c: AgentClient) -> None:
        c.load_adapter(paths[agent], version=version, activate=False)

    return change_team(clients, lambda agent, c: c.activate_adapter(version).active, prepare=load)


def activate_team(clients: Mapping[str, AgentClient], version: int | None) -> list[AgentChange]:
    """Activate an already loaded `version` on every agent (None = the base model)."""
    return change_team(clients, lambda agent, c: c.activate_adapter(version, use_base_model=version is None).active)


def rollback_team(clients: Mapping[str, AgentClient]) -> list[AgentChange]:
    """Every agent back to its previously active version."""
    return change_team(clients, lambda agent, c: c.rollback_adapter().active)
