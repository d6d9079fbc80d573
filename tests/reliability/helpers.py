"""Shared by the reliability tests: the checks themselves (so that `test_can_fail.py` runs the
very same checks against deliberately broken servers), raw calls, RSS, metrics, failover."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc

from collm_serve.adapters.manifest import MANIFEST_FILE, WEIGHTS_FILE, write_manifest
from collm_serve.client import AgentClient, AgentError, GenerateOutput, UnavailableError
from collm_serve.proto.collm.v1 import agent_pb2 as pb
from collm_serve.proto.collm.v1 import agent_pb2_grpc

PROMPT = [{"role": "user", "content": "Say it."}]
SERVICE = pb.DESCRIPTOR.services_by_name["AgentService"]
METHODS = {m.name: m for m in SERVICE.methods}  # all nine RPCs, from the proto itself
BROKEN_DIR = Path(__file__).parent / "broken"  # sitecustomize that breaks a child server on purpose
CALL_TIMEOUT = 30.0  # generous on 2 busy cores; a wedged server fails at this deadline (read per call)
BASE_MODEL_ID = "tiny-llama-s0"

# The fast agent every module shares: tiny random model, a handful of tokens per request, a
# small admission bound (the load test), adapters (the fuzz and swap tests).
FAST_AGENT = {
    "max_model_len": 160, "max_prompt_tokens": 96, "max_tokens_limit": 4, "max_n": 2,
    "sampling": {"max_tokens": 2, "temperature": 0.7, "top_p": 0.9},
    "max_concurrent_requests": 4, "max_queued_requests": 8, "keep_versions": 2, "drain_seconds": 10,
}


# -- adapters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adapters:
    root: Path
    v1: Path
    v2: Path  # v1's A with B negated: different greedy output, no second model load


def make_adapters(root: Path) -> Adapters:
    """helper/v1 (random LoRA, steps=0), helper/v2, and three bad folders the fuzz can name."""
    from safetensors.torch import load_file, save_file

    from collm_serve.adapters.factory import make_adapter
    from collm_serve.models import tiny_model_dir

    v1 = make_adapter(tiny_model_dir(), root / "helper" / "v1", name="helper", version=1,
                      base_model_id=BASE_MODEL_ID, prompt_ids=[1], target="", rank=4, steps=0, seed=1)
    v2 = root / "helper" / "v2"
    shutil.copytree(v1, v2)
    tensors = load_file(v2 / WEIGHTS_FILE)
    save_file({k: (-t if "lora_B" in k else t) for k, t in tensors.items()}, v2 / WEIGHTS_FILE)
    write_manifest(v2, name="helper", version=2, base_model=BASE_MODEL_ID, algorithm="test")
    corrupt = shutil.copytree(v1, root / "helper" / "corrupt")
    flip_byte(corrupt / WEIGHTS_FILE, -10)
    other = shutil.copytree(v1, root / "helper" / "other-agent")
    write_manifest(other, name="main", version=3, base_model=BASE_MODEL_ID)
    (root / "helper" / "empty").mkdir()
    return Adapters(root, v1, v2)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def manifest_sha(folder: Path) -> str:
    return json.loads((folder / MANIFEST_FILE).read_text())["sha256"]


# -- calls ------------------------------------------------------------------------------------


def typed_call(stub: agent_pb2_grpc.AgentServiceStub, method: str, request, timeout: float | None = None):
    """(status code, details, response or stream chunks) of one call with a typed request."""
    timeout = timeout or CALL_TIMEOUT
    try:
        if METHODS[method].server_streaming:
            return grpc.StatusCode.OK, "", list(getattr(stub, method)(request, timeout=timeout))
        return grpc.StatusCode.OK, "", getattr(stub, method)(request, timeout=timeout)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def raw_call(channel: grpc.Channel, method: str, payload: bytes, timeout: float | None = None):
    """Send `payload` as the request body, unserialised: anything, not only valid protobuf."""
    timeout = timeout or CALL_TIMEOUT
    path = f"/{SERVICE.full_name}/{method}"
    try:
        if METHODS[method].server_streaming:
            list(channel.unary_stream(path)(payload, timeout=timeout))
        else:
            channel.unary_unary(path)(payload, timeout=timeout)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def assert_serves(address: str, timeout: float | None = None) -> GenerateOutput:
    """The liveness check: a valid request is answered with tokens and their log-probs."""
    with AgentClient(address, retries=0, timeout=timeout or CALL_TIMEOUT) as c:
        try:
            out = c.generate(messages=PROMPT, max_tokens=2, temperature=0.7, seed=1)
        except AgentError as e:
            raise AssertionError(f"the server no longer serves a valid request: {e}") from e
    assert out.token_ids and len(out.logprobs) == len(out.token_ids), out
    return out


def greedy(c: AgentClient, **kw) -> GenerateOutput:
    return c.generate(messages=PROMPT, max_tokens=4, temperature=0, **kw)


def assert_served_by(out: GenerateOutput, version: int, sha256: str, tokens: list[int] | None = None) -> None:
    """A response names the adapter that served it (version AND sha256) and behaves like it."""
    assert (out.adapter.version, out.adapter.sha256) == (version, sha256), (
        f"served by {out.adapter.version!r}/{out.adapter.sha256[:12]!r}, expected v{version}/{sha256[:12]}")
    if tokens is not None:
        assert out.token_ids == tokens, f"v{version} answered {out.token_ids}, its pristine weights answer {tokens}"


# -- process observations -------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- failover --------------------------------------------------------------------------------


def generate_anywhere(addresses: list[str], timeout: float | None = None, **kw) -> tuple[str, GenerateOutput]:
    """Retry elsewhere: try the replicas in turn; UNAVAILABLE (down, draining, refused) moves on.

    Only UNAVAILABLE moves on: the replica never accepted the request, so nothing is duplicated
    (the same rule as the client SDK's own retries). Raises the last UnavailableError."""
    last: UnavailableError | None = None
    for address in addresses:
        with AgentClient(address, retries=0, timeout=timeout or CALL_TIMEOUT) as c:
            try:
                return address, c.generate(**kw)
            except UnavailableError as e:
                last = e
    assert last is not None, "no replica addresses given"
    raise last


def broken_env(*breaks: str) -> dict[str, str]:
    """Environment that makes a child agent load `broken/sitecustomize.py` with these faults."""
    path = os.pathsep.join(p for p in (str(BROKEN_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "COLLM_BREAK": ",".join(breaks)}

