"""Versioned adapters of one agent: load → verify → activate atomically, pin, roll back, evict.

Invariants (tests/serve/test_hot_swap.py proves them on both engines):
- Every version gets an engine id from one counter that is never reused, so nothing cached
  for v2 (vLLM LoRA cache, prefix cache keyed by LoRA) can serve v3. The counter belongs to the
  ENGINE: agents packed on one engine share it (`lora_ids`, from engines/shared.py
  `SharedEngine`), so no two agents' versions ever get the same id.
- `active` is ONE reference replaced in one assignment; `acquire()` reads it once, so a
  request sees the old or the new version, never a mix, and keeps its version to the end.
- Load/activate/unload/rollback are serialised by one lock; generation never takes it.
- A version stays loaded while any request holds it; beyond `keep_versions` the oldest idle,
  inactive versions are evicted from the engine (and the engine's own list is checked). The
  engine has `keep_versions + swap_slots` slots: the extra ones hold old versions still finishing
  requests, so a swap under load loads at once. Only a load that finds every slot busy waits
  (bounded) for an in-flight request to end, then evicts.
- The active version is persisted in the state dir and restored at start-up.
- The engine loads a private copy of each version (`<state_dir>/loaded-adapters/`), validated and
  hashed after copying: changes to the published folder (in place, truncated, a disk fault)
  never reach a loaded version, nor crash the engine reading it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from collm_serve.adapters.validate import CheckedAdapter, base_model_shapes, check_adapter, resolve_inside
from collm_serve.engines.base import Engine, EngineAdapter
from collm_serve.errors import CollmError, FailedPrecondition, InvalidArgument, NotFound

ACTIVE_FILE = "active_adapter.json"


@dataclass
class LoadedVersion:
    checked: CheckedAdapter
    engine_adapter: EngineAdapter
    loaded_at: float = field(default_factory=time.time)
    in_flight: int = 0

    @property
    def version(self) -> int:
        return self.checked.manifest.version

    @property
    def sha256(self) -> str:
        return self.checked.manifest.sha256


@dataclass(frozen=True)
class Selection:
    """What one request runs on: None = the base model."""

    loaded: LoadedVersion | None

    @property
    def engine_adapter(self) -> EngineAdapter | None:
        return self.loaded.engine_adapter if self.loaded else None


class AdapterRegistry:
    def __init__(
        self,
        engine: Engine,
        *,
        agent: str,
        base_model_id: str,
        base_model_dir: Path,
        adapter_root: Path,
        state_dir: Path,
        keep_versions: int,
        max_lora_rank: int,
        swap_slots: int = 0,
        slot_wait_s: float = 30.0,
        on_change=None,
        lora_ids: Iterator[int] | None = None,
    ):
        self.engine = engine
        self.agent = agent
        self.base_model_id = base_model_id
        self.adapter_root = adapter_root
        self.state_dir = state_dir
        self.keep_versions = keep_versions
        self.slots = keep_versions + swap_slots  # the engine's adapter capacity (its max_loras)
        self.max_lora_rank = max_lora_rank
        self.slot_wait_s = slot_wait_s
        self._released = asyncio.Event()  # an inactive version's last in-flight request ended
        self._base_shapes = base_model_shapes(base_model_dir)
        self._ids = lora_ids if lora_ids is not None else itertools.count(1)  # the engine's, when shared
        self._versions: dict[int, LoadedVersion] = {}
        self._active: LoadedVersion | None = None
        self.history: list[int] = []  # activated versions, oldest first (0 = base)
        self._lock = asyncio.Lock()
        # private copies of the loaded versions (see `_stage`); leftovers of a crashed run go
        self._staging = state_dir / "loaded-adapters"
        shutil.rmtree(self._staging, ignore_errors=True)
        self._on_change = on_change or (lambda active: None)

    # -- request path (no lock, no await) --------------------------------------------------
    @property
    def active(self) -> LoadedVersion | None:
        return self._active

    @contextmanager
    def acquire(self, version: int = 0, use_base: bool = False):
        """Pin the version a request runs on for its whole life."""
        if use_base:
            loaded = None
        elif version:
            loaded = self._versions.get(version)
            if loaded is None:
                have = sorted(self._versions) or "none"
                raise NotFound(f"adapter version {version} of {self.agent} is not loaded (loaded: {have})")
        else:
            loaded = self._active  # one read: old or new, never a mix
        if loaded is not None:
            loaded.in_flight += 1
        try:
            yield Selection(loaded)
        finally:
            if loaded is not None:
                loaded.in_flight -= 1
                if not loaded.in_flight and loaded is not self._active:
                    self._released.set()

    def versions(self) -> list[LoadedVersion]:
        return [self._versions[v] for v in sorted(self._versions)]

    # -- control path (serialised) ---------------------------------------------------------
    async def load(self, path: str, version: int = 0, activate: bool = False) -> LoadedVersion:
        async with self._lock:
            resolved = resolve_inside(self.adapter_root, path)
            # Everything after this reads a private copy: the publisher's folder may change (a
            # version published in place, a disk fault, a truncation) without the engine ever
            # seeing it; a file truncated while an engine mmaps it would kill the process (SIGBUS).
            staged = await asyncio.to_thread(self._stage, resolved)
            try:
                try:
                    checked = await asyncio.to_thread(
                        check_adapter, staged, base_model_id=self.base_model_id,
                        base_shapes=self._base_shapes, max_lora_rank=self.max_lora_rank,
                        expected_version=version,
                    )
                except CollmError as e:  # name the folder the caller gave, not the private copy
                    e.args = tuple(str(a).replace(str(staged), str(resolved)) for a in e.args)
                    raise
                checked = dataclasses.replace(checked, path=resolved)  # reported as published
                if checked.manifest.name != self.agent:
                    raise FailedPrecondition(
                        f"adapter belongs to agent {checked.manifest.name!r}, this is {self.agent!r}"
                    )
                existing = self._versions.get(checked.manifest.version)
                if existing is not None:
                    if existing.sha256 != checked.manifest.sha256:
                        raise FailedPrecondition(
                            f"v{checked.manifest.version} is already loaded with different weights "
                            f"(sha256 {existing.sha256[:12]}…); versions are immutable, publish a new one"
                        )
                    loaded = existing
                else:
                    adapter = EngineAdapter(self.agent, checked.manifest.version, str(staged), next(self._ids))
                    await self._make_room(keep=self._active)
                    await self.engine.add_adapter(adapter)  # raises → nothing changed
                    loaded = LoadedVersion(checked, adapter)
                    self._versions[loaded.version] = loaded
                    staged = None  # the engine's copy now; removed when the version is evicted
            finally:
                if staged is not None:
                    await asyncio.to_thread(shutil.rmtree, staged, True)
            if activate:
                self._switch(loaded)
            return loaded

    async def activate(self, version: int = 0, use_base: bool = False) -> tuple[LoadedVersion | None, LoadedVersion | None]:
        async with self._lock:
            previous = self._active
            if use_base:
                self._switch(None)
            else:
                loaded = self._versions.get(version)
                if loaded is None:
                    raise NotFound(f"adapter version {version} is not loaded (loaded: {sorted(self._versions) or 'none'})")
                self._switch(loaded)
            return self._active, previous

    async def rollback(self) -> tuple[LoadedVersion | None, LoadedVersion | None]:
        async with self._lock:
            previous = self._active
            # walk back the history to the last version before the current one still loaded
            for v in reversed(self.history[:-1]):
                current = self._active.version if self._active else 0
                if v == current:
                    continue
                if v == 0:
                    self._switch(None, record=False)
                    self.history.pop()
                    return self._active, previous
                if v in self._versions:
                    self._switch(self._versions[v], record=False)
                    self.history.pop()
                    return self._active, previous
            raise FailedPrecondition("no earlier version is loaded to roll back to")

    async def unload(self, version: int, force: bool = False) -> None:
        async with self._lock:
            loaded = self._versions.get(version)
            if loaded is None:
                raise NotFound(f"adapter version {version} is not loaded")
            if loaded is self._active:
                if not force:
                    raise FailedPrecondition(
                        f"v{version} is active; activate another version first or pass force "
                        "(falls back to the base model)"
                    )
                self._switch(None)
            if loaded.in_flight:
                raise FailedPrecondition(f"v{version} is serving {loaded.in_flight} request(s); retry when they finish")
            await self._evict(loaded)

    def _stage(self, source: Path) -> Path:
        """Copy a published adapter folder to this registry's private staging area (read with
        plain reads, no mmap); check_adapter then hashes the copy, so the engine loads exactly
        the bytes whose sha256 is reported."""
        self._staging.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(prefix="v", dir=self._staging))
        try:
            shutil.copytree(source, target, dirs_exist_ok=True)
        except OSError as e:
            shutil.rmtree(target, ignore_errors=True)
            raise InvalidArgument("path", f"cannot read the adapter folder: {e}") from None
        return target

    async def _evict(self, loaded: LoadedVersion) -> None:
        del self._versions[loaded.version]
        await self.engine.remove_adapter(loaded.engine_adapter)
        await asyncio.to_thread(shutil.rmtree, loaded.engine_adapter.path, True)
        if loaded.engine_adapter.engine_id in await self.engine.loaded_adapter_ids():
            raise FailedPrecondition(f"engine still lists v{loaded.version} after unloading it")

    async def _make_room(self, keep: LoadedVersion | None) -> None:
        """Evict oldest idle inactive versions so that one more fits in keep_versions; versions
        still serving requests are never evicted and may use the `swap_slots` beyond it.

        When all `slots` hold the active version or versions still serving requests, wait up
        to `slot_wait_s` for one of those requests to end: unpinned requests go to the active
        version, so an old version drains within one request's time. Pushing new versions faster
        than requests finish (a trainer publishing every second) then slows the pushes down
        instead of failing them.
        """
        deadline = time.monotonic() + self.slot_wait_s
        while True:
            for loaded in sorted(self._versions.values(), key=lambda lv: lv.loaded_at):
                if len(self._versions) < self.keep_versions:
                    break
                if loaded is keep or loaded is self._active or loaded.in_flight:
                    continue
                await self._evict(loaded)
            if len(self._versions) < self.slots:
                return
            remaining = deadline - time.monotonic()
            draining = any(lv.in_flight for lv in self._versions.values() if lv is not keep and lv is not self._active)
            if remaining <= 0 or not draining:
                busy = ", ".join(f"v{lv.version} ({lv.in_flight} in flight)" for lv in self.versions()
                                 if lv is not self._active)
                raise FailedPrecondition(
                    f"all {self.slots} adapter slots hold the active version or versions still "
                    f"serving requests ({busy}) after waiting {self.slot_wait_s:g} s; retry, or raise "
                    "swap_slots / adapter_slot_wait_s"
                )
            self._released.clear()  # no await since the last in_flight check: no release is missed
            try:
                await asyncio.wait_for(self._released.wait(), remaining)
            except TimeoutError:
                pass

    def _switch(self, loaded: LoadedVersion | None, record: bool = True) -> None:
        self._active = loaded  # the atomic pointer switch
        if record:
            self.history.append(loaded.version if loaded else 0)
        self._persist()
        self._on_change(loaded)

    # -- persistence -----------------------------------------------------------------------
    def _persist(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {"agent": self.agent, "version": 0, "path": "", "sha256": ""}
        if self._active is not None:
            data.update(
                version=self._active.version, sha256=self._active.sha256,
                path=str(self._active.checked.path),
            )
        tmp = self.state_dir / (ACTIVE_FILE + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_dir / ACTIVE_FILE)

    def saved_active(self) -> dict | None:
        path = self.state_dir / ACTIVE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return data if data.get("version") else None

    async def restore(self) -> LoadedVersion | None:
        """Load and activate the version recorded before a restart (checked like any load)."""
        saved = self.saved_active()
        if saved is None:
            return None
        loaded = await self.load(saved["path"], version=int(saved["version"]), activate=True)
        if loaded.sha256 != saved["sha256"]:
            raise FailedPrecondition(
                f"saved active adapter v{saved['version']} changed on disk since it was activated"
            )
        return loaded
