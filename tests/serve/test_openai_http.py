"""The OpenAI-compatible HTTP endpoint (collm_serve/agent/http_api.py), driven by the real `openai`
client and by curl, against a live agent (transformers engine, tiny model).

The answers are compared with the gRPC service's own answers to the same greedy request: one
generation path, two front ends. The agent admits one request at a time and queues none, so a
second request while one is in the engine must get 429.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

openai = pytest.importorskip("openai")

from collm_serve.adapters.factory import make_adapter  # noqa: E402
from collm_serve.adapters.manifest import read_manifest  # noqa: E402
from collm_serve.client import AgentClient  # noqa: E402
from collm_serve.models import chat_prompt_ids, tiny_model_dir  # noqa: E402
from tests.conftest import gauge, metrics_text, start_agent, wait_in_engine  # noqa: E402

TOKEN, ADMIN = "inference-secret", "admin-secret"
CHAT = [{"role": "user", "content": "Say it."}]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("oai-adapters")


@pytest.fixture(scope="module")
def adapter(root):
    """v1 of agent `helper`: random LoRA weights (steps=0), a visible change at no training cost."""
    from transformers import AutoTokenizer

    base = tiny_model_dir()
    ids = chat_prompt_ids(AutoTokenizer.from_pretrained(base), CHAT)
    return make_adapter(base, root / "helper" / "v1", name="helper", version=1, base_model_id="tiny-llama-s0",
                        prompt_ids=ids, target="x", steps=0, seed=1)


@pytest.fixture(scope="module")
def agent(root, adapter):
    agent = start_agent(root.parent, "helper", http_port=0, adapter_root=str(root), auth_token=TOKEN,
                        admin_token=ADMIN, max_concurrent_requests=1, max_queued_requests=0)
    with AgentClient(agent.address, token=ADMIN) as c:
        c.load_adapter(adapter, activate=True)
    yield agent
    agent.stop()


@pytest.fixture()
def oai(agent):
    with openai.OpenAI(base_url=f"http://localhost:{agent.http_port}/v1", api_key=TOKEN, max_retries=0,
                       timeout=60) as client:
        yield client


@pytest.fixture()
def grpc_client(agent):
    with AgentClient(agent.address, token=TOKEN) as c:
        yield c


def idle(agent) -> None:
    """The previous request has left the engine (an aborted stream ends asynchronously)."""
    deadline = time.monotonic() + 30
    while gauge(agent, "collm_requests_in_flight") > 0:
        assert time.monotonic() < deadline, "a request stayed in the engine"
        time.sleep(0.02)


def test_models_lists_the_agent_its_versions_and_the_base(oai):
    ids = [m.id for m in oai.models.list().data]
    assert ids == ["helper", "helper@base", "helper@v1"]


def test_chat_matches_grpc_and_names_the_adapter(oai, grpc_client, adapter):
    r = oai.chat.completions.create(model="helper", messages=CHAT, max_tokens=12, temperature=0)
    ref = grpc_client.generate(messages=CHAT, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "helper"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    served = r.model_extra["collm"]["adapter"]
    assert served == {"name": "helper", "version": 1, "sha256": read_manifest(adapter).sha256}


def test_stream_sends_chunks_then_usage_with_logprobs(oai, grpc_client):
    ref = grpc_client.generate(messages=CHAT, max_tokens=12, temperature=0)
    chunks = list(oai.chat.completions.create(
        model="helper", messages=CHAT, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}, logprobs=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["collm"]["adapter"]["version"] == 1
    content = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert len(content) > 2 and text == ref.text
    logprobs = [lp.logprob for c in content if c.choices[0].logprobs for lp in c.choices[0].logprobs.content]
    assert logprobs == pytest.approx(list(ref.logprobs), abs=1e-5)
    assert [c.choices[0].finish_reason for c in content][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_chat_logprobs_in_openai_format(oai, grpc_client):
    r = oai.chat.completions.create(model="helper", messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                    top_logprobs=0)
    ref = grpc_client.generate(messages=CHAT, max_tokens=8, temperature=0)
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(list(ref.logprobs), abs=1e-5)
    assert "".join(c.token for c in content) == ref.text
    assert all(c.bytes == list(c.token.encode()) and c.top_logprobs == [] for c in content)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="helper", messages=CHAT, logprobs=True, top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


def test_completions_with_logprobs(oai, grpc_client):
    r = oai.completions.create(model="helper", prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=0)
    ref = grpc_client.generate(prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == ref.text
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(list(ref.logprobs), abs=1e-5)
    assert "".join(lp.tokens) == ref.text and lp.text_offset[0] == 0


def test_model_pins_a_version_or_the_base(oai, grpc_client):
    pinned = oai.chat.completions.create(model="helper@v1", messages=CHAT, max_tokens=8, temperature=0)
    base = oai.chat.completions.create(model="helper@base", messages=CHAT, max_tokens=8, temperature=0)
    assert pinned.model_extra["collm"]["adapter"]["version"] == 1
    assert base.model_extra["collm"]["adapter"] is None
    assert base.choices[0].message.content == grpc_client.generate(
        messages=CHAT, max_tokens=8, temperature=0, use_base_model=True).text
    for unknown in ("helper@v7", "other"):
        with pytest.raises(openai.NotFoundError) as e:
            oai.chat.completions.create(model=unknown, messages=CHAT, max_tokens=4)
        assert e.value.body["param"] == "model" and unknown.split("@")[-1] in e.value.body["message"]


def test_bad_fields_are_400_naming_the_field(oai):
    cases = [
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"max_completion_tokens": 10_000}, "max_completion_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"n": 99}, "n"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"extra_body": {"no_such_field": 1}}, "no_such_field"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ]
    for kwargs, param in cases:
        call = {"model": "helper", "messages": CHAT, **kwargs}
        with pytest.raises(openai.BadRequestError) as e:
            oai.chat.completions.create(**call)
        assert e.value.status_code == 400 and e.value.body["param"] == param, (kwargs, e.value.body)
        assert e.value.body["message"].startswith(param), e.value.body


def test_wrong_or_missing_token_is_401_and_admin_token_also_generates(agent):
    base = f"http://localhost:{agent.http_port}/v1"
    for key in ("wrong", ""):
        with openai.OpenAI(base_url=base, api_key=key or "x", max_retries=0,
                           default_headers={} if key else {"Authorization": ""}) as c:
            with pytest.raises(openai.AuthenticationError) as e:
                c.chat.completions.create(model="helper", messages=CHAT, max_tokens=2)
            assert e.value.status_code == 401
    with openai.OpenAI(base_url=base, api_key=ADMIN, max_retries=0) as c:
        assert c.chat.completions.create(model="helper", messages=CHAT, max_tokens=2).choices


def test_full_queue_is_429_and_a_closed_stream_frees_the_engine(oai, agent):
    idle(agent)
    stream = oai.chat.completions.create(model="helper", messages=CHAT, max_tokens=128, extra_body={"min_tokens": 128},
                                         stream=True)
    next(iter(stream))  # the request holds the only engine slot now
    wait_in_engine(agent)
    with pytest.raises(openai.RateLimitError) as e:
        oai.chat.completions.create(model="helper", messages=CHAT, max_tokens=2)
    assert e.value.status_code == 429 and "queue full" in e.value.body["message"]
    stream.close()  # the client hangs up: the engine request is aborted, the slot freed
    idle(agent)
    assert oai.chat.completions.create(model="helper", messages=CHAT, max_tokens=2).choices
    counted = [ln for ln in metrics_text(agent).splitlines()
               if ln.startswith("collm_requests_total") and 'method="http:/v1/chat/completions"' in ln]
    assert any('code="RESOURCE_EXHAUSTED"' in ln for ln in counted), counted
    assert any('code="CANCELLED"' in ln for ln in counted), counted
    assert any('code="OK"' in ln for ln in counted), counted


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_streams_sse(agent):
    body = {"model": "helper", "messages": CHAT, "max_tokens": 6, "temperature": 0, "stream": True}
    out = subprocess.run(
        ["curl", "-sS", "-N", "-w", "\n%{http_code}", f"http://localhost:{agent.http_port}/v1/chat/completions",
         "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json", "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=60, check=True).stdout
    *events, status = out.strip().split("\n")
    assert status == "200"
    data = [line.removeprefix("data: ") for line in events if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["collm"]["adapter"]["version"] == 1
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    bad = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", f"http://localhost:{agent.http_port}/v1/models"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    error, status = bad.rsplit("\n", 1)
    assert status == "401" and json.loads(error)["error"]["type"] == "AuthenticationError"


def test_draining_agent_answers_503(agent, oai):
    """Last in this module: it stops the agent. SIGTERM with a request in flight: new ones get 503."""
    import signal

    idle(agent)
    stream = oai.chat.completions.create(model="helper", messages=CHAT, max_tokens=128, extra_body={"min_tokens": 128},
                                         stream=True)
    next(iter(stream))
    agent.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while True:  # the drain starts when the signal is handled: poll the health route for it
        with openai.OpenAI(base_url=f"http://localhost:{agent.http_port}/v1", api_key=TOKEN, max_retries=0) as c:
            try:
                c.chat.completions.create(model="helper", messages=CHAT, max_tokens=2)
            except openai.RateLimitError:  # still serving: the in-flight stream holds the slot
                assert time.monotonic() < deadline
                time.sleep(0.05)
                continue
            except openai.InternalServerError as e:
                assert e.status_code == 503 and "draining" in e.body["message"]
                break
    assert sum(1 for _ in stream) > 0  # the in-flight request still finishes
