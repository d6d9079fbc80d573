"""When every adapter slot is busy, LoadAdapter waits (bounded) for a version to drain; with
`swap_slots` beyond keep_versions a swap under load does not wait at all.

Found by bench/hot_swap.py: a trainer publishing a new version every second while four
clients generate filled all `keep_versions` slots with versions that still had requests in
flight, and the push failed at once. The registry now waits for one of them to drain.
Real transformers engine (tiny model) in-process, so a request's life is held open exactly.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from collm_serve.adapters.factory import make_adapter
from collm_serve.adapters.manifest import write_manifest
from collm_serve.adapters.registry import AdapterRegistry
from collm_serve.engines.transformers_engine import TransformersEngine
from collm_serve.errors import FailedPrecondition, InvalidArgument
from collm_serve.models import model_id_for, tiny_model_dir

TINY_ID = model_id_for("embedded:tiny-llama")


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> tuple[Path, dict[int, Path]]:
    root = tmp_path_factory.mktemp("slot-root")
    first = make_adapter(tiny_model_dir(), root / "helper" / "v1", name="helper", version=1,
                         base_model_id=TINY_ID, prompt_ids=[1], target="", steps=0)
    out = {1: first}
    for v in (2, 3, 4):
        out[v] = Path(shutil.copytree(first, root / "helper" / f"v{v}"))
        write_manifest(out[v], name="helper", version=v, base_model=TINY_ID, algorithm="test")
    return root, out


async def _serving_v1(versions, tmp: Path, keep: int, wait_s: float,
                     swap_slots: int = 0) -> tuple[AdapterRegistry, dict[int, Path]]:
    """A registry on a real engine with v1 loaded and active; the engine has exactly the
    registry's slots (as collm_serve/agent/server.py builds it), so an over-full registry would fail there."""
    root, paths = versions
    engine = TransformersEngine(tiny_model_dir(), TINY_ID, max_model_len=256, max_loras=keep + swap_slots,
                                cpu_threads=1)
    await engine.start()
    reg = AdapterRegistry(engine, agent="helper", base_model_id=TINY_ID, base_model_dir=tiny_model_dir(),
                          adapter_root=root, state_dir=tmp / "state", keep_versions=keep,
                          swap_slots=swap_slots, max_lora_rank=16, slot_wait_s=wait_s)
    await reg.load(str(paths[1]), activate=True)
    return reg, paths


def test_load_waits_for_an_in_flight_version_then_evicts_it(versions, tmp_path):
    async def run():
        reg, paths = await _serving_v1(versions, tmp_path, keep=2, wait_s=30)
        with reg.acquire() as held:  # a request that started on v1 and is still running
            assert held.loaded.version == 1
            await reg.load(str(paths[2]), activate=True)  # slots: v1 (in flight), v2 (active)
            load3 = asyncio.create_task(reg.load(str(paths[3]), activate=True))
            await asyncio.sleep(0.5)
            assert not load3.done(), "the load must wait while v1 still serves a request"
            assert reg.active.version == 2
            released = time.monotonic()
        await asyncio.wait_for(load3, 10)  # the request ended: v1 is evicted, v3 loads
        assert time.monotonic() >= released
        assert reg.active.version == 3
        assert [lv.version for lv in reg.versions()] == [2, 3]
        engine_ids = await reg.engine.loaded_adapter_ids()
        assert engine_ids == {lv.engine_adapter.engine_id for lv in reg.versions()}
        await reg.engine.shutdown()

    asyncio.run(run())


def test_load_gives_up_after_the_wait_and_changes_nothing(versions, tmp_path):
    async def run():
        reg, paths = await _serving_v1(versions, tmp_path, keep=2, wait_s=0.3)
        with reg.acquire():
            await reg.load(str(paths[2]), activate=True)
            start = time.monotonic()
            with pytest.raises(FailedPrecondition, match=r"v1 \(1 in flight\).*0\.3 s"):
                await reg.load(str(paths[3]), activate=True)
            assert time.monotonic() - start >= 0.3
            assert reg.active.version == 2 and [lv.version for lv in reg.versions()] == [1, 2]
        await reg.engine.shutdown()

    asyncio.run(run())


def test_load_fails_at_once_when_nothing_can_drain(versions, tmp_path):
    """keep_versions=1 with an active version: waiting could never free a slot."""
    async def run():
        reg, paths = await _serving_v1(versions, tmp_path, keep=1, wait_s=30)
        start = time.monotonic()
        with pytest.raises(FailedPrecondition, match="adapter slots"):
            await reg.load(str(paths[2]), activate=True)
        assert time.monotonic() - start < 5
        assert reg.active.version == 1
        await reg.engine.shutdown()

    asyncio.run(run())


def test_swap_slot_loads_at_once_while_an_old_version_serves(versions, tmp_path):
    """keep_versions=2 + 1 swap slot: v1 still serving and v2 active do not hold up v3; the next
    load after v1's request ends evicts the idle old versions back down to keep_versions."""
    async def run():
        reg, paths = await _serving_v1(versions, tmp_path, keep=2, wait_s=30, swap_slots=1)
        with reg.acquire() as held:
            assert held.loaded.version == 1
            await reg.load(str(paths[2]), activate=True)
            start = time.monotonic()
            await reg.load(str(paths[3]), activate=True)  # v1 busy, v2 active: v3 in the swap slot
            assert time.monotonic() - start < 5
            assert [lv.version for lv in reg.versions()] == [1, 2, 3]
            with reg.acquire() as on_v3:
                await reg.load(str(paths[4]), activate=True)  # v2 idle: evicted; v1 and v3 busy
                assert on_v3.loaded.version == 3
            assert [lv.version for lv in reg.versions()] == [1, 3, 4]
            assert time.monotonic() - start < 10
        assert reg.active.version == 4
        engine_ids = await reg.engine.loaded_adapter_ids()
        assert engine_ids == {lv.engine_adapter.engine_id for lv in reg.versions()}
        await reg.engine.shutdown()

    asyncio.run(run())


def test_one_kept_version_can_still_be_swapped_with_a_swap_slot(versions, tmp_path):
    """keep_versions=1: without a swap slot a new version can never load (test above); with one
    it loads and the old version is evicted on the next load."""
    async def run():
        reg, paths = await _serving_v1(versions, tmp_path, keep=1, wait_s=30, swap_slots=1)
        await reg.load(str(paths[2]), activate=True)
        assert reg.active.version == 2 and [lv.version for lv in reg.versions()] == [1, 2]
        await reg.load(str(paths[3]), activate=True)
        assert [lv.version for lv in reg.versions()] == [2, 3]
        await reg.engine.shutdown()

    asyncio.run(run())


def test_engine_loads_a_private_copy_the_publisher_cannot_touch(versions, tmp_path):
    """Truncating or rewriting a published folder after (or while) it loads never reaches the
    engine: it reads the registry's own copy, hashed after copying; eviction removes the copy."""
    from collm_serve.adapters.manifest import WEIGHTS_FILE, sha256_file

    async def run():
        root, paths = versions
        published = Path(shutil.copytree(paths[2], root / "helper" / f"published-{tmp_path.name}"))
        reg, _ = await _serving_v1(versions, tmp_path, keep=1, wait_s=5, swap_slots=1)
        loaded = await reg.load(str(published), activate=True)
        staged = Path(loaded.engine_adapter.path)
        assert staged != published and staged.is_relative_to(tmp_path / "state")
        assert str(loaded.checked.path) == str(published.resolve())  # reported as published
        (published / WEIGHTS_FILE).write_bytes((published / WEIGHTS_FILE).read_bytes()[:1000])
        assert sha256_file(staged / WEIGHTS_FILE) == loaded.sha256  # the engine's bytes are intact
        with pytest.raises(InvalidArgument) as refused:  # the damaged folder is refused ...
            await reg.load(str(published), activate=True)
        assert "loaded-adapters" not in str(refused.value)  # ... naming it, never the private copy
        assert reg.active is loaded
        await reg.load(str(paths[3]), activate=True)  # evicts v1, keeps v2 (kept) ...
        await reg.load(str(paths[4]), activate=True)  # ... then v2 goes: its private copy with it
        assert not staged.exists()
        await reg.engine.shutdown()

    asyncio.run(run())
