"""Bad-input fuzz: > 1000 generated requests across all nine AgentService RPCs.

Typed requests with malformed fields (empty/oversized strings, NUL bytes, huge or negative
numbers, NaN/inf, unknown roles, odd request ids, adapter paths with `..`, absolute paths,
wrong versions) and raw bodies that are not protobuf or hold invalid UTF-8. Every answer must
carry a status code from the RPC's allowed set: UNKNOWN and INTERNAL are never allowed (an
INTERNAL found here was a bug and is fixed: see the README). Every 50 calls, and at the end of
each test, a valid request must still be served.

Hypothesis settings: examples are derandomised (the same ones every CI run) and not shrunk:
each call changes a live server (adapters loaded, activated, unloaded), so replaying smaller
examples would run against a different server, and against a wedged one would wait out every
deadline. A failure prints the example as generated.
"""

from __future__ import annotations

import math
import string
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from collm_serve.proto.collm.v1 import agent_pb2 as pb
from collm_serve.proto.collm.v1 import agent_pb2_grpc
from tests.reliability.helpers import FAST_AGENT, METHODS, assert_serves, raw_call, typed_call

C = grpc.StatusCode
# What each RPC may answer to anything a client can send (gRPC's own RESOURCE_EXHAUSTED for an
# over-long message is tested separately). Never UNKNOWN or INTERNAL.
ALLOWED = {
    "Generate": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND},
    "GenerateStream": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND},
    "GetAgentInfo": {C.OK},
    "Abort": {C.OK, C.INVALID_ARGUMENT},
    "LoadAdapter": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.PERMISSION_DENIED, C.FAILED_PRECONDITION},
    "ActivateAdapter": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND},
    "RollbackAdapter": {C.OK, C.FAILED_PRECONDITION},
    "UnloadAdapter": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION},
    "ListAdapters": {C.OK},
}
assert set(ALLOWED) == set(METHODS), "a new RPC needs its allowed codes here"
CHECK_EVERY = 50
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False, report_multiple_bugs=False,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])

CALLS: Counter[str] = Counter()  # per RPC, over the whole module (the summary test reads it)

# -- strategies ------------------------------------------------------------------------------
WEIRD = ["", " ", "\x00", "a\x00b", "\n", "\t\r", "..", "../", "/", "\\", "%s%n%x", "'; DROP TABLE x;--",
         "\u202e\u200b", "\ufeff", "\U0001f642" * 40, "é" * 129, "x" * 129, "x" * 4000, "<|im_end|>",
         "{{ 7*7 }}", "\x7f\x1b[2J"]
strings = st.one_of(st.sampled_from(WEIRD), st.text(max_size=40))
int32s = st.one_of(st.integers(-3, 10), st.sampled_from([-(2**31), 2**31 - 1, 1 << 16]),
                   st.integers(-(2**31), 2**31 - 1))
int64s = st.one_of(st.integers(-3, 5), st.sampled_from([-(2**63), 2**63 - 1, 2**62]),
                   st.integers(-(2**63), 2**63 - 1))
floats = st.one_of(st.sampled_from([0.0, -0.0, 1e-45, 1e-3, 0.5, 0.7, 1.0, 2.0, -1.0, 3.4e38,
                                    math.nan, math.inf, -math.inf]),
                   st.floats(width=32, allow_nan=True, allow_infinity=True))
roles = st.one_of(st.sampled_from(["system", "user", "assistant"]),
                  st.sampled_from(["", "robot", "USER", "user ", "user\x00", "tool", "function"]), strings)
messages = st.lists(st.builds(pb.ChatMessage, role=roles, content=strings), max_size=4)

SAMPLING_FIELDS = {"max_tokens": int32s, "temperature": floats, "top_p": floats, "top_k": int32s,
                   "seed": int64s, "n": int32s}
SANE_SAMPLING = {"max_tokens": st.integers(1, 4), "temperature": st.sampled_from([0.0, 0.7, 1.0, 1.5]),
                 "top_p": st.sampled_from([0.5, 0.9, 1.0]), "top_k": st.sampled_from([0, 5, 50]),
                 "seed": st.integers(0, 1000), "n": st.integers(1, 2)}


@st.composite
def sampling(draw, fields: dict) -> pb.SamplingParams:
    s = pb.SamplingParams()
    for name, values in fields.items():
        if draw(st.booleans()):
            setattr(s, name, draw(values))
    s.stop.extend(draw(st.one_of(st.lists(strings, max_size=3), st.just(["x"] * 17), st.just(["y" * 300]))))
    return s


wild_generate = st.builds(
    pb.GenerateRequest, request_id=strings, messages=messages, prompt=strings,
    sampling=sampling(SAMPLING_FIELDS), adapter_version=int64s, use_base_model=st.booleans())


@st.composite
def one_field_off(draw) -> pb.GenerateRequest:
    """A valid request (chat or raw prompt) with at most one field replaced by a wild value:
    about half of these reach the engine, the rest fail on exactly one field."""
    chat = draw(st.booleans())
    r = pb.GenerateRequest(
        request_id=draw(st.one_of(st.just(""), st.text(string.ascii_letters + "-_.:", min_size=1, max_size=64))),
        messages=[pb.ChatMessage(role="user", content=draw(st.text(min_size=1, max_size=30).filter(str.strip)))]
        if chat else [],
        prompt="" if chat else draw(st.text(min_size=1, max_size=30)),
        sampling=draw(sampling(SANE_SAMPLING)), adapter_version=draw(st.sampled_from([None, None, 1, 2])),
    )
    del r.sampling.stop[:]
    field = draw(st.sampled_from(["none", "none", "request_id", "messages", "prompt", "sampling",
                                  "adapter_version", "use_base_model"]))
    if field == "request_id":
        r.request_id = draw(strings)
    elif field == "messages":
        del r.messages[:]
        r.messages.extend(draw(messages))
    elif field == "prompt":
        r.prompt = draw(strings)
    elif field == "sampling":
        r.sampling.CopyFrom(draw(sampling(SAMPLING_FIELDS)))
    elif field == "adapter_version":
        r.adapter_version = draw(int64s)
    elif field == "use_base_model":
        r.use_base_model = True
    return r


generate_requests = st.one_of(wild_generate, one_field_off())


def adapter_paths(root) -> st.SearchStrategy[str]:
    inside = [str(root / "helper" / "v1"), str(root / "helper" / "v2")]  # absolute but inside: valid
    named = ["helper/v1", "helper/v2", "./helper/v1/", "helper//v2", "helper/v1/..", "helper/v1/../v2",
             "helper/corrupt", "helper/other-agent", "helper/empty", "helper/missing", "helper",
             "helper/v1/adapter_model.safetensors", f"../{root.name}/helper/v1", "../", "../../../etc",
             "/etc", "/", "/proc/self", "~", "$HOME/x", "file:///etc/passwd", "helper/v1\x00", "a" * 300,
             "/".join(["a" * 100] * 50), "", "."]
    segments = st.lists(st.sampled_from(["..", ".", "", "helper", "v1", "v2", "a" * 256, "\x00", "é", "~"]),
                        min_size=1, max_size=6).map("/".join)
    return st.one_of(st.sampled_from(inside + named), segments, strings)


# -- checks ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(fast_agent):
    with grpc.insecure_channel(fast_agent.address) as ch:
        yield ch


def check(fast_agent, method: str, code: grpc.StatusCode, details: str, request, allowed=None) -> None:
    CALLS[method] += 1
    allowed = ALLOWED[method] if allowed is None else allowed
    assert code in allowed, f"{method} answered {code.name}: {details!r}\n  to: {request!r}"[:2000]
    if sum(CALLS.values()) % CHECK_EVERY == 0:
        assert_serves(fast_agent.address)


def check_output(request: pb.GenerateRequest, response) -> None:
    """An accepted request got what it asked for: n choices, tokens with one log-prob each."""
    s = request.sampling
    n = s.n if s.HasField("n") else 1
    limit = s.max_tokens if s.HasField("max_tokens") else FAST_AGENT["sampling"]["max_tokens"]
    assert [c.index for c in response.choices] == list(range(n))
    for c in response.choices:
        assert 1 <= len(c.token_ids) <= limit and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def run_typed(fast_agent, channel, method, request) -> None:
    code, details, response = typed_call(agent_pb2_grpc.AgentServiceStub(channel), method, request)
    check(fast_agent, method, code, details, request)
    if code == C.OK and method == "Generate":
        check_output(request, response)
    if code == C.OK and method == "GenerateStream":
        assert response[0].prompt_token_ids and response[-1].usage.completion_tokens == sum(
            len(ch.token_ids) for ch in response)


# -- the fuzz --------------------------------------------------------------------------------


def test_fuzz_generate(fast_agent, channel):
    @settings(FUZZ, max_examples=300)
    @given(generate_requests)
    def one(request):
        run_typed(fast_agent, channel, "Generate", request)

    one()
    assert CALLS["Generate"] >= 300
    assert_serves(fast_agent.address)


def test_fuzz_generate_stream(fast_agent, channel):
    @settings(FUZZ, max_examples=150)
    @given(generate_requests)
    def one(request):
        run_typed(fast_agent, channel, "GenerateStream", request)

    one()
    assert CALLS["GenerateStream"] >= 150
    assert_serves(fast_agent.address)


def test_fuzz_abort(fast_agent, channel):
    ids = st.one_of(st.lists(strings, max_size=8), st.just(["x"] * 1025), st.just(["a" * 100_000]))

    @settings(FUZZ, max_examples=60)
    @given(ids)
    def one(request_ids):
        run_typed(fast_agent, channel, "Abort", pb.AbortRequest(request_ids=request_ids))

    one()
    assert CALLS["Abort"] >= 60
    assert_serves(fast_agent.address)


def test_fuzz_adapter_control_plane(fast_agent, channel, adapters):
    """Load / activate / roll back / unload / list / info in random order with random fields;
    after every call the registry and the engine agree on what is loaded."""
    versions = st.one_of(st.sampled_from([0, 1, 2]), int64s)
    ops = st.one_of(
        st.builds(lambda p, v, a: ("LoadAdapter", pb.LoadAdapterRequest(path=p, version=v, activate=a)),
                  adapter_paths(adapters.root), st.one_of(st.sampled_from([0, 1, 2]), int64s), st.booleans()),
        st.builds(lambda v, b: ("ActivateAdapter", pb.ActivateAdapterRequest(version=v, use_base_model=b)),
                  versions, st.booleans()),
        st.builds(lambda v, f: ("UnloadAdapter", pb.UnloadAdapterRequest(version=v, force=f)),
                  versions, st.booleans()),
        # no fields: the nonce only keeps Hypothesis from deduplicating the repeats (the server's
        # state differs between them)
        *(st.integers(0, 10**9).map(lambda _, m=m, r=r: (m, r())) for m, r in (
            ("RollbackAdapter", pb.RollbackAdapterRequest), ("ListAdapters", pb.ListAdaptersRequest),
            ("GetAgentInfo", pb.GetAgentInfoRequest))),
    )
    stub = agent_pb2_grpc.AgentServiceStub(channel)

    @settings(FUZZ, max_examples=300)
    @given(ops)
    def one(op):
        method, request = op
        run_typed(fast_agent, channel, method, request)
        listing = stub.ListAdapters(pb.ListAdaptersRequest(), timeout=30)
        loaded = [a.version for a in listing.adapters]
        assert len(listing.engine_lora_ids) == len(loaded) <= 2, listing
        assert listing.active.version in [0, *loaded], listing

    one()
    for method in ("LoadAdapter", "ActivateAdapter", "UnloadAdapter", "RollbackAdapter", "ListAdapters",
                   "GetAgentInfo"):
        assert CALLS[method] >= 10, (method, CALLS)
    assert_serves(fast_agent.address)


def _string_field_paths(descriptor, prefix=()) -> list[tuple[int, ...]]:
    """Field-number paths to every string field (into nested messages) of a request type."""
    paths = []
    for f in descriptor.fields:
        if f.type == f.TYPE_STRING:
            paths.append((*prefix, f.number))
        elif f.type == f.TYPE_MESSAGE:
            paths += _string_field_paths(f.message_type, (*prefix, f.number))
    return paths


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _length_delimited(path: tuple[int, ...], payload: bytes) -> bytes:
    """Wire bytes that put `payload` at the field path (wire type 2 at every level)."""
    for number in reversed(path):
        payload = _varint(number << 3 | 2) + _varint(len(payload)) + payload
    return payload


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"ok\xf8\x88\x80\x80\x80", b"\xe2\x82"]
STRING_FIELDS = [(m, path) for m in METHODS for path in _string_field_paths(METHODS[m].input_type)]


@pytest.mark.parametrize("method, path", STRING_FIELDS, ids=[f"{m}-{'.'.join(map(str, p))}" for m, p in STRING_FIELDS])
def test_invalid_utf8_in_every_string_field(fast_agent, channel, method, path):
    """proto3 strings must be UTF-8: the server refuses the body as INVALID_ARGUMENT."""
    for bad in INVALID_UTF8:
        payload = _length_delimited(path, bad)
        code, details = raw_call(channel, method, payload)
        check(fast_agent, method, code, details, payload, allowed={C.INVALID_ARGUMENT})
        assert "does not parse" in details, details
    assert_serves(fast_agent.address)


@st.composite
def raw_bodies(draw) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(METHODS)))
    kind = draw(st.sampled_from(["bytes", "mutated", "utf8", "wire_type"]))
    if kind == "bytes":
        return method, draw(st.binary(max_size=64))
    if kind == "wire_type":  # a known field number with the wrong wire type
        number = draw(st.integers(1, 12))
        return method, _varint(number << 3 | draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]))) + draw(
            st.binary(max_size=12))
    valid = pb.GenerateRequest(request_id="r", messages=[pb.ChatMessage(role="user", content="hi")],
                               sampling=pb.SamplingParams(max_tokens=2)).SerializeToString()
    if kind == "utf8":
        return method, valid + _length_delimited((draw(st.integers(1, 7)),), draw(st.sampled_from(INVALID_UTF8)))
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return method, bytes(data[: draw(st.integers(0, len(data)))])


def test_fuzz_raw_bodies_on_every_rpc(fast_agent, channel):
    """Bodies that may not be protobuf at all: parse errors are INVALID_ARGUMENT, bodies that
    do parse are answered like any request of that RPC."""

    @settings(FUZZ, max_examples=400)
    @given(raw_bodies())
    def one(body):
        method, payload = body
        code, details = raw_call(channel, method, payload)
        check(fast_agent, method, code, details, payload, allowed=ALLOWED[method] | {C.INVALID_ARGUMENT})

    one()
    assert_serves(fast_agent.address)


def test_oversized_message_is_resource_exhausted(fast_agent):
    """A body over the server's 16 MiB limit (the client's own limit lifted to send it)."""
    body = pb.GenerateRequest(prompt="x" * (17 << 20)).SerializeToString()
    with grpc.insecure_channel(fast_agent.address, [("grpc.max_send_message_length", 64 << 20)]) as ch:
        for method in ("Generate", "LoadAdapter"):
            code, details = raw_call(ch, method, body)
            check(fast_agent, method, code, details, "17 MiB body", allowed={C.RESOURCE_EXHAUSTED})
    assert_serves(fast_agent.address)


def test_fuzz_reached_every_rpc_more_than_1000_times():
    """The module's total (runs last in file order; skipped when run on its own)."""
    if sum(CALLS.values()) == 0:
        pytest.skip("run with the fuzz tests above")
    print(f"fuzz calls: {sum(CALLS.values())} in all, per RPC {dict(CALLS)}")
    assert set(CALLS) == set(METHODS), CALLS
    assert sum(CALLS.values()) >= 1000, CALLS
