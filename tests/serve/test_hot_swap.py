"""LoRA hot-swap on the real vLLM CPU engine and the transformers engine (tiny model).

Adapters are real peft folders trained for a few steps so greedy output visibly changes.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from collm_serve.adapters.factory import make_adapter
from collm_serve.adapters.manifest import MANIFEST_FILE, WEIGHTS_FILE, write_manifest
from collm_serve.client import (
    AgentClient,
    AgentError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from collm_serve.models import chat_prompt_ids, tiny_model_dir
from tests.conftest import metrics_text, start_agent, wait_in_engine

PROMPT = [{"role": "user", "content": "Say it."}]
TARGETS = {1: "alpha beta gamma", 2: "delta epsilon zeta", 3: "eta theta iota"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapter-root")


@pytest.fixture(scope="module")
def adapters(root) -> dict[int, Path]:
    """Three versions of agent `helper` for the tiny model, each trained to say its target."""
    from transformers import AutoTokenizer

    base = tiny_model_dir()
    tok = AutoTokenizer.from_pretrained(base)
    ids = chat_prompt_ids(tok, PROMPT)
    return {
        v: make_adapter(base, root / "helper" / f"v{v}", name="helper", version=v, base_model_id="tiny-llama-s0",
                        prompt_ids=ids, target=text, steps=30, lr=2e-2, seed=v)
        for v, text in TARGETS.items()
    }


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def agent(request, root, adapters):
    folder = root.parent / f"state-{request.param}"
    folder.mkdir(exist_ok=True)
    agent = start_agent(folder, "helper", engine=request.param,
                        adapter_root=str(root), keep_versions=3, max_tokens_limit=128,
                        **({"kv_cache_bytes": 64 << 20} if request.param == "vllm" else {}))
    yield agent
    agent.stop()


def greedy(c: AgentClient, **kw):
    return c.generate(messages=PROMPT, max_tokens=12, temperature=0, **kw)


def test_swap_changes_output_names_version_and_rollback_restores(agent, adapters):
    with AgentClient(agent.address) as c:
        base = greedy(c)
        assert base.adapter.is_base
        r1 = c.load_adapter(adapters[1], activate=True)
        assert r1.active.version == 1 and r1.adapter.sha256 == json.loads((adapters[1] / MANIFEST_FILE).read_text())["sha256"]
        out1 = greedy(c)
        assert out1.adapter.version == 1 and out1.adapter.sha256 == r1.adapter.sha256
        assert out1.token_ids != base.token_ids
        c.load_adapter(adapters[2], activate=True)
        out2 = greedy(c)
        assert out2.adapter.version == 2 and out2.token_ids != out1.token_ids
        back = c.rollback_adapter()
        assert back.active.version == 1 and back.previous.version == 2
        again = greedy(c)
        assert again.adapter.version == 1 and again.token_ids == out1.token_ids  # exactly restored
        pinned = greedy(c, adapter_version=2)
        assert pinned.adapter.version == 2 and pinned.token_ids == out2.token_ids
        assert greedy(c, use_base_model=True).token_ids == base.token_ids
        listing = c.list_adapters()
        assert listing.active.version == 1 and [a.version for a in listing.adapters] == [1, 2]
        assert len(listing.engine_lora_ids) == 2


def test_in_flight_request_finishes_on_its_version(agent, adapters):
    with AgentClient(agent.address) as c:
        c.load_adapter(adapters[1], activate=True)
        # min_tokens: the request is still running when the swap is sent (an early EOS could end
        # it before wait_in_engine sees it)
        reference = c.generate(messages=PROMPT, max_tokens=100, min_tokens=100, temperature=0, adapter_version=1)
        result = {}

        def long_request():
            with AgentClient(agent.address) as c2:
                result["out"] = c2.generate(messages=PROMPT, max_tokens=100, min_tokens=100, temperature=0)

        t = threading.Thread(target=long_request)
        t.start()
        wait_in_engine(agent)
        c.load_adapter(adapters[3], activate=True)  # swap while the request runs
        t.join(120)
        assert result["out"].adapter.version == 1
        assert result["out"].token_ids == reference.token_ids
        assert greedy(c).adapter.version == 3


def test_swaps_under_load_lose_nothing(agent, adapters):
    """Concurrency 4 while 20 swaps and rollbacks: 0 failures, every version was active then."""
    with AgentClient(agent.address) as c:
        for v in (1, 2):
            c.load_adapter(adapters[v], activate=False)
        c.activate_adapter(1)
    swaps: list[tuple[float, float, int]] = [(0.0, 0.0, 1)]  # (call start, call end, active after)
    results: list[tuple[float, float, int]] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def worker(seed: int):
        with AgentClient(agent.address, retries=0) as wc:
            i = 0
            while not stop.is_set():
                s = time.monotonic()
                try:
                    out = wc.generate(messages=PROMPT, max_tokens=6, temperature=1.0, seed=seed * 1000 + i)
                    results.append((s, time.monotonic(), out.adapter.version))
                except Exception as e:  # noqa: BLE001 - every failure counts
                    failures.append(e)
                i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    with AgentClient(agent.address) as c:
        for i in range(20):
            s = time.monotonic()
            r = c.activate_adapter(2) if i % 2 == 0 else c.rollback_adapter()
            swaps.append((s, time.monotonic(), r.active.version))
            time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    assert len(results) >= 8  # requests completed across the swaps (CI: ~40)
    versions_seen = {v for _, _, v in results}
    assert versions_seen <= {1, 2} and len(versions_seen) == 2
    for s, e, v in results:
        # version v was active during [swap_i.start, swap_{i+1}.end]; it must overlap [s, e]
        ok = any(sv == v and ss <= e and (j + 1 == len(swaps) or swaps[j + 1][1] >= s)
                 for j, (ss, _, sv) in enumerate(swaps))
        assert ok, (s, e, v)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case", ["outside_root", "missing", "no_manifest", "corrupt_weights", "truncated",
                                  "wrong_base", "rank_too_big", "bad_target", "wrong_agent",
                                  "version_mismatch", "same_version_other_weights", "not_json"])
def test_bad_adapters_are_rejected_and_old_version_keeps_serving(agent, adapters, root, tmp_path, case):
    with AgentClient(agent.address, retries=0) as c:
        c.load_adapter(adapters[1], activate=True)
        before = greedy(c)
        bad = root / "bad" / f"{agent.port}-{case}"
        expected: type[AgentError]
        version = None  # unset: the manifest's version (agent.proto LoadAdapterRequest)
        if case == "outside_root":
            bad = _copy(adapters[2], tmp_path / "elsewhere")
            expected, words = PermissionDeniedError, "outside the adapter root"
        elif case == "missing":
            bad, expected, words = root / "nope", NotFoundError, "does not exist"
        elif case == "no_manifest":
            (_copy(adapters[2], bad) / MANIFEST_FILE).unlink()
            expected, words = InvalidArgumentError, MANIFEST_FILE
        elif case == "corrupt_weights":
            w = _copy(adapters[2], bad) / WEIGHTS_FILE
            data = bytearray(w.read_bytes())
            data[-10] ^= 0xFF
            w.write_bytes(bytes(data))
            expected, words = InvalidArgumentError, "sha256"
        elif case == "truncated":
            w = _copy(adapters[2], bad) / WEIGHTS_FILE
            w.write_bytes(w.read_bytes()[:-100])
            expected, words = InvalidArgumentError, "safetensors"
        elif case == "wrong_base":
            _copy(adapters[2], bad)
            m = json.loads((bad / MANIFEST_FILE).read_text())
            write_manifest(bad, name="helper", version=m["version"], base_model="SmolLM2-135M-Instruct")
            expected, words = FailedPreconditionError, "trained on"
        elif case == "rank_too_big":
            _copy(adapters[2], bad)
            cfg = json.loads((bad / "adapter_config.json").read_text())
            cfg["r"] = 64
            (bad / "adapter_config.json").write_text(json.dumps(cfg))
            expected, words = FailedPreconditionError, "max_lora_rank"
        elif case == "bad_target":
            from safetensors.torch import load_file, save_file

            _copy(adapters[2], bad)
            tensors = load_file(bad / WEIGHTS_FILE)
            tensors = {k.replace("q_proj", "qq_proj"): v for k, v in tensors.items()}
            save_file(tensors, bad / WEIGHTS_FILE)
            write_manifest(bad, name="helper", version=2, base_model="tiny-llama-s0")
            expected, words = FailedPreconditionError, "does not exist"
        elif case == "wrong_agent":
            _copy(adapters[2], bad)
            write_manifest(bad, name="main", version=2, base_model="tiny-llama-s0")
            expected, words = FailedPreconditionError, "belongs to agent"
        elif case == "version_mismatch":
            bad, version = adapters[2], 7
            expected, words = InvalidArgumentError, "manifest says v2"
        elif case == "same_version_other_weights":
            _copy(adapters[2], bad)  # v2's manifest with v1's weights... but valid hashes
            shutil.copy(adapters[1] / WEIGHTS_FILE, bad / WEIGHTS_FILE)
            write_manifest(bad, name="helper", version=1, base_model="tiny-llama-s0")
            (bad / WEIGHTS_FILE).write_bytes((adapters[3] / WEIGHTS_FILE).read_bytes())
            write_manifest(bad, name="helper", version=1, base_model="tiny-llama-s0")
            expected, words = FailedPreconditionError, "immutable"
        elif case == "not_json":
            (_copy(adapters[2], bad) / "adapter_config.json").write_text("{not json")
            expected, words = InvalidArgumentError, "adapter_config.json"
        with pytest.raises(expected) as e:
            c.load_adapter(bad, version=version, activate=True)
        assert words in e.value.details, e.value.details
        after = greedy(c)
        assert after.adapter.version == 1 and after.token_ids == before.token_ids


def test_unload_frees_the_engine_slot_and_guards_active(agent, adapters):
    with AgentClient(agent.address, retries=0) as c:
        c.load_adapter(adapters[1], activate=True)
        c.load_adapter(adapters[2], activate=False)
        n_before = len(c.list_adapters().engine_lora_ids)
        r = c.unload_adapter(2)
        assert 2 not in r.loaded_versions
        assert len(c.list_adapters().engine_lora_ids) == n_before - 1  # the engine's own list
        with pytest.raises(NotFoundError):
            greedy(c, adapter_version=2)
        with pytest.raises(FailedPreconditionError):
            c.unload_adapter(1)  # active
        r = c.unload_adapter(1, force=True)
        assert r.active.version == 0 and greedy(c).adapter.is_base
        # reloading a version gets a fresh engine identity and the same behaviour
        c.load_adapter(adapters[1], activate=True)
        assert greedy(c).adapter.version == 1


def test_metrics_report_swaps(agent, adapters):
    with AgentClient(agent.address) as c:
        c.load_adapter(adapters[3], activate=True)
    body = metrics_text(agent)
    assert 'collm_active_adapter_version{agent="helper"} 3.0' in body
    assert 'collm_adapter_swaps_total{agent="helper",op="load",outcome="ok"}' in body
    assert 'outcome="invalid_argument"' in body  # the rejected loads above were counted
    assert "collm_adapter_swap_seconds_bucket" in body


def test_restart_comes_back_serving_the_active_version(agent, adapters, root):
    with AgentClient(agent.address) as c:
        c.load_adapter(adapters[2], activate=True)
        before = greedy(c)
    agent.stop()
    restarted = agent.__class__(agent.agent, config=agent.args[agent.args.index("--config") + 1],
                                log_path=agent.log_path).start()
    try:
        assert restarted.serving_event["adapter_version"] == 2  # active before health said SERVING
        with AgentClient(restarted.address) as c:
            after = greedy(c)
            assert after.adapter.version == 2 and after.token_ids == before.token_ids
    finally:
        restarted.stop()
