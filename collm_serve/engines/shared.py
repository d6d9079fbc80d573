"""One engine shared by several agents (packing, collm_serve/agent/packing.py): each agent sees it
through its own `AgentEngineView`, which keeps the agents apart.

- A request runs only on an adapter THIS agent added: the servicer gets the adapter from the
  agent's own registry, and the view refuses any other (a bug upstream must fail loudly, never
  serve another agent's weights).
- Engine LoRA ids come from ONE counter per engine (`SharedEngine.lora_ids`, handed to every
  agent's `AdapterRegistry`), never reused, so no two agents' versions share an id or a cached
  weight (the engine-notes rule "one id per version" holds across agents).
- Request ids are namespaced (`<agent>/<id>`): two agents' callers may pick the same id, the
  engine must see two requests.
- `loaded_adapter_ids` lists only this agent's adapters (ListAdapters, the registry's
  "did unload free the slot" check).
- The group, not an agent, starts and shuts the engine down.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator

from collm_serve.engines.base import ChoiceDelta, Engine, EngineAdapter, EngineInfo, EngineRequest
from collm_serve.errors import FailedPrecondition


class SharedEngine:
    """The engine of a group of agents and its LoRA id counter."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.lora_ids = itertools.count(1)  # shared by every agent's registry: ids unique per engine

    def view(self, agent: str) -> "AgentEngineView":
        return AgentEngineView(self.engine, agent)


class AgentEngineView(Engine):
    """What one agent's servicer and registry use as its engine."""

    def __init__(self, engine: Engine, agent: str):
        self.engine = engine
        self.agent = agent
        self.name = engine.name
        self._live: set[int] = set()  # engine ids this agent added and has not removed
        self._ever: set[int] = set()  # every engine id this agent added (ids are never reused)

    def _engine_id(self, request_id: str) -> str:
        return f"{self.agent}/{request_id}"

    async def start(self) -> None:
        """The group starts the shared engine once (collm_serve/agent/server.py)."""

    async def shutdown(self) -> None:
        """The group shuts the shared engine down once, after every agent drained."""

    def generate(self, request: EngineRequest) -> AsyncIterator[ChoiceDelta]:
        adapter = request.adapter
        if adapter is not None and (adapter.name != self.agent or adapter.engine_id not in self._live):
            raise FailedPrecondition(f"adapter {adapter.engine_name} (engine id {adapter.engine_id}) is not one of "
                                     f"agent {self.agent}'s loaded adapters; refusing to serve it")
        return self.engine.generate(dataclasses.replace(request, request_id=self._engine_id(request.request_id)))

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(self._engine_id(request_id))

    async def add_adapter(self, adapter: EngineAdapter) -> None:
        if adapter.name != self.agent:
            raise FailedPrecondition(f"agent {self.agent} cannot load adapter {adapter.engine_name} of another agent")
        await self.engine.add_adapter(adapter)
        self._live.add(adapter.engine_id)
        self._ever.add(adapter.engine_id)

    async def remove_adapter(self, adapter: EngineAdapter) -> None:
        self._live.discard(adapter.engine_id)
        await self.engine.remove_adapter(adapter)

    async def loaded_adapter_ids(self) -> set[int]:
        # this agent's ids the engine still lists: a failed unload stays visible to the registry
        return await self.engine.loaded_adapter_ids() & self._ever

    def info(self) -> EngineInfo:
        return self.engine.info()

    @property
    def dead(self) -> bool:
        return self.engine.dead
