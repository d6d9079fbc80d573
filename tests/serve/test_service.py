"""Every RPC and every bad input, through the real client over the network, on both engines."""

from __future__ import annotations

import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collm_serve.client import (
    AgentClient,
    AsyncAgentClient,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    sampling_from_pb,
)
from collm_serve.traces.records import SamplingRecord
from collm_serve.config import STREAM_INTERVAL
from tests.conftest import gauge, grpcurl_path, metrics_text, start_agent

USER = [{"role": "user", "content": "Write one word."}]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    agent = start_agent(tmp_path_factory.mktemp("tiny-hf"), "helper", max_queued_requests=8)
    yield agent
    agent.stop()


@pytest.fixture(params=["transformers", "vllm"])
def agent(request, tiny_hf):
    return tiny_hf if request.param == "transformers" else request.getfixturevalue("vllm_agent")


def test_generate_returns_tokens_logprobs_and_adapter(agent):
    with AgentClient(agent.address) as c:
        out = c.generate(messages=USER, max_tokens=8, temperature=0.7, seed=1)
        assert 0 < len(out.token_ids) <= 8
        assert len(out.logprobs) == len(out.token_ids)
        assert all(lp <= 0 for lp in out.logprobs)
        assert out.prompt_token_ids and out.adapter.is_base
        assert out.finish_reason in ("stop", "length")
        # a fixed seed reproduces the same sample
        again = c.generate(messages=USER, max_tokens=8, temperature=0.7, seed=1)
        assert again.token_ids == out.token_ids
        # the chat template and system prompt are applied once, server-side
        raw = c.generate(prompt="Hello", max_tokens=4, temperature=0)
        assert len(raw.prompt_token_ids) < len(out.prompt_token_ids)


def test_n_choices_and_stream(agent):
    with AgentClient(agent.address) as c:
        out = c.generate(messages=USER, max_tokens=6, temperature=1.0, n=3, seed=7)
        assert [ch.index for ch in out.choices] == [0, 1, 2]
        assert out.completion_tokens == sum(len(ch.token_ids) for ch in out.choices)
        chunks = list(c.generate_stream(messages=USER, max_tokens=6, temperature=0))
    assert chunks[0].prompt_token_ids and chunks[-1].usage.completion_tokens > 0
    ids = [t for ch in chunks for t in ch.token_ids]
    lps = [x for ch in chunks for x in ch.logprobs]
    assert len(ids) == len(lps) == chunks[-1].usage.completion_tokens
    assert any(ch.finish_reason for ch in chunks)
    with AgentClient(agent.address) as c:  # streaming and unary agree on a greedy answer
        assert c.generate(messages=USER, max_tokens=6, temperature=0).token_ids == ids


def _grouped_as_stream_interval(chunks, interval: int, tokens: int) -> bool:
    """vLLM's rule: the first token alone, then a message once `interval` new tokens are ready, the
    rest in the last one. A consumer that falls behind gets merged messages (vLLM's
    RequestOutputCollector), so later messages may be larger and fewer, never smaller or more."""
    counts = [len(ch.token_ids) for ch in chunks[1:-1]]  # first chunk: prompt ids; last: usage
    return (sum(counts) == tokens and counts[0] >= 1 and all(c >= interval for c in counts[1:-1])
            and len(counts) <= 1 + -(-(tokens - 1) // interval))


def test_stream_interval_groups_tokens_per_message(agent, tiny_hf):
    """Per request, or the agent's default (`stream_interval`, STREAM_INTERVAL unless configured)."""
    kw = dict(messages=USER, max_tokens=11, min_tokens=11, temperature=1.0, seed=3)
    with AgentClient(agent.address) as c:
        by3 = list(c.generate_stream(stream_interval=3, **kw))
        by1 = list(c.generate_stream(stream_interval=1, **kw))
        default = list(c.generate_stream(**kw))
        unary = c.generate(**kw)
    assert _grouped_as_stream_interval(by3, 3, 11)
    assert _grouped_as_stream_interval(default, STREAM_INTERVAL, 11)
    if agent is tiny_hf:  # the transformers engine groups in our StreamInterval: exact
        assert [len(ch.token_ids) for ch in by3[1:-1]] == [1, 3, 3, 3, 1]
        assert [len(ch.token_ids) for ch in by1[1:-1]] == [1] * 11
    for chunks in (by3, by1, default):  # the same tokens and log-probs, only grouped differently
        assert [t for ch in chunks for t in ch.token_ids] == unary.token_ids
        assert [x for ch in chunks for x in ch.logprobs] == pytest.approx(unary.logprobs, abs=1e-4)
        assert "".join(ch.text for ch in chunks) == unary.text
    with AgentClient(agent.address) as c, pytest.raises(InvalidArgumentError, match="stream_interval"):
        list(c.generate_stream(stream_interval=0, **kw))


def test_response_echoes_the_sampling_it_used(tiny_hf):
    """What a trace records: the request's fields, the agent's defaults (tests/conftest.py:
    max_tokens 16, temperature 0.7, top_p 0.9) for the unset ones, exactly as the engine got them."""
    with AgentClient(tiny_hf.address) as c:
        out = c.generate(messages=USER, max_tokens=4, top_k=5, seed=11, stop=["\n\n"])
        assert out.sampling == SamplingRecord(temperature=0.7, top_p=0.9, top_k=5, max_tokens=4, seed=11,
                                              stop=("\n\n",))
        out = c.generate(messages=USER, temperature=0.5, n=2)
        assert out.sampling == SamplingRecord(temperature=0.5, top_p=0.9, top_k=0, max_tokens=16, n=2)
        chunks = list(c.generate_stream(messages=USER, max_tokens=3, temperature=1.0, min_tokens=1))
    assert sampling_from_pb(chunks[0]) == SamplingRecord(temperature=1.0, top_p=0.9, top_k=0, max_tokens=3,
                                                         min_tokens=1)
    assert all(sampling_from_pb(ch) is None for ch in chunks[1:])  # first chunk only


def test_info_abort_list(agent):
    with AgentClient(agent.address) as c:
        info = c.info()
        assert info.agent == "helper" and info.state == "serving"
        assert info.engine in ("transformers", "vllm-cpu", "vllm")
        assert info.limits.max_prompt_tokens > 0 and info.active_adapter.version == 0
        assert c.abort(["no-such-request"]) == []
        listing = c.list_adapters()
        assert listing.active.version == 0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
        (dict(messages=[{"role": "user", "content": ""}]), "messages[0].content"),
        (dict(messages=USER, prompt="both"), "messages"),
        (dict(messages=USER, max_tokens=0), "sampling.max_tokens"),
        (dict(messages=USER, max_tokens=-3), "sampling.max_tokens"),
        (dict(messages=USER, max_tokens=100000), "sampling.max_tokens"),
        (dict(messages=USER, temperature=-0.1), "sampling.temperature"),
        (dict(messages=USER, top_p=0.0), "sampling.top_p"),
        (dict(messages=USER, top_p=1.5), "sampling.top_p"),
        (dict(messages=USER, n=0), "sampling.n"),
        (dict(messages=USER, n=10000), "sampling.n"),
        (dict(messages=USER, temperature=0, n=2), "sampling.n"),
        (dict(messages=USER, temperature=2.5), "sampling.temperature"),  # vLLM's bound: INTERNAL before
        (dict(messages=[{"role": "user", "content": "word " * 2000}]), "messages"),
        (dict(prompt="x" * 100000), "prompt"),
        (dict(messages=USER, request_id="x" * 500), "request_id"),
        (dict(messages=USER, adapter_version=0), "adapter_version"),  # set 0: not a version (agent.proto)
        (dict(messages=USER, adapter_version=-2), "adapter_version"),
        (dict(messages=USER, adapter_version=1, use_base_model=True), "adapter_version"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(agent, kwargs, field):
    with AgentClient(agent.address, retries=0) as c:
        with pytest.raises(InvalidArgumentError) as e:
            c.generate(**kwargs)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details.startswith(field), e.value.details
        # the server is not wedged: a valid request still succeeds
        assert c.generate(messages=USER, max_tokens=2).token_ids


def test_unknown_adapter_version_is_not_found(agent):
    with AgentClient(agent.address, retries=0) as c:
        with pytest.raises(NotFoundError):
            c.generate(messages=USER, max_tokens=2, adapter_version=99)
        with pytest.raises(NotFoundError):
            c.activate_adapter(99)
        with pytest.raises(NotFoundError):
            c.unload_adapter(99)
        assert c.generate(messages=USER, max_tokens=2).token_ids


def test_adapter_targets_are_explicit(tiny_hf):
    """agent.proto: an unset version means "the manifest's" (LoadAdapter) and is an error for
    ActivateAdapter unless use_base_model; a set 0 is never a version. Each refusal names `version`."""
    with AgentClient(tiny_hf.address, retries=0) as c:
        for call in (lambda: c.activate_adapter(),  # no target
                     lambda: c.activate_adapter(0),  # 0 is not a version
                     lambda: c.activate_adapter(0, use_base_model=True),  # two targets
                     lambda: c.activate_adapter(-1),
                     lambda: c.load_adapter("helper/v1", version=0)):
            with pytest.raises(InvalidArgumentError) as e:
                call()
            assert e.value.details.startswith("version"), e.value.details
        assert c.activate_adapter(use_base_model=True).active.version == 0  # the base model
        assert c.generate(messages=USER, max_tokens=2).adapter.is_base  # unset = the active one


def test_deadline_aborts_the_engine_request(agent):
    # min_tokens = max_tokens: the answer cannot end at EOS before the deadline (it could, by
    # chance, when only max_tokens was set), and 128 tokens take well over 0.3 s on either engine.
    with AgentClient(agent.address, retries=0) as c:
        with pytest.raises(DeadlineExceededError):
            c.generate(messages=USER, max_tokens=128, min_tokens=128, temperature=1.0, timeout=0.3, stop=None)
    # the engine slot is released promptly (the request was aborted, not left running) and the
    # server counted the cancellation. The gauge drops when the admission slot is released, a
    # moment before the RPC's outcome is counted, so both are polled together.
    deadline = time.time() + 10
    while time.time() < deadline:
        in_flight, body = gauge(agent, "collm_requests_in_flight"), metrics_text(agent)
        if in_flight == 0 and 'code="CANCELLED",method="Generate"' in body:
            break
        time.sleep(0.2)
    else:
        counted = [ln for ln in body.splitlines() if ln.startswith("collm_requests_total{")]
        raise AssertionError(f"no aborted engine request after the deadline: in flight {in_flight}; {counted}")


def test_min_tokens_holds_back_eos(agent):
    with AgentClient(agent.address, retries=0) as c:
        out = c.generate(messages=USER, max_tokens=24, min_tokens=24, temperature=1.0, seed=3)
        assert len(out.token_ids) == 24 and out.finish_reason == "length"
        with pytest.raises(InvalidArgumentError, match="sampling.min_tokens"):
            c.generate(messages=USER, max_tokens=4, min_tokens=5)


def test_metrics_endpoint(agent):
    with AgentClient(agent.address, retries=0) as c:
        c.generate(messages=USER, max_tokens=2)
        with pytest.raises(InvalidArgumentError):
            c.generate(messages=USER, top_p=3.0)
    body = metrics_text(agent)
    for name in ("collm_requests_total", "collm_request_latency_seconds_bucket", "collm_tokens_generated_total",
                 "collm_queue_depth", "collm_active_adapter_version"):
        assert name in body, name
    assert 'code="OK",method="Generate"' in body
    assert 'code="INVALID_ARGUMENT",method="Generate"' in body


def test_health_and_grpcurl_reflection(agent):
    with grpc.insecure_channel(agent.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="collm.v1.AgentService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    tool = grpcurl_path()
    listed = subprocess.run([tool, "-plaintext", agent.address, "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert "collm.v1.AgentService" in listed.stdout and "grpc.health.v1.Health" in listed.stdout
    called = subprocess.run(
        [tool, "-plaintext", "-d", '{"messages":[{"role":"user","content":"hi"}],"sampling":{"max_tokens":3}}',
         agent.address, "collm.v1.AgentService/Generate"], capture_output=True, text=True, timeout=60)
    assert called.returncode == 0, called.stderr
    assert '"tokenIds"' in called.stdout or '"token_ids"' in called.stdout
    bad = subprocess.run(
        [tool, "-plaintext", "-d", '{"messages":[{"role":"user","content":"hi"}],"sampling":{"topP":2}}',
         agent.address, "collm.v1.AgentService/Generate"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "InvalidArgument" in bad.stdout + bad.stderr


async def test_async_client_concurrent(agent):
    import asyncio

    async with AsyncAgentClient(agent.address) as c:
        outs = await asyncio.gather(*[c.generate(messages=USER, max_tokens=4, seed=i) for i in range(6)])
        assert all(o.token_ids for o in outs)
        chunks = [ch async for ch in c.generate_stream(messages=USER, max_tokens=3)]
        assert chunks[-1].usage.completion_tokens > 0
