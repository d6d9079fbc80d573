"""Retry policy, adapter pinning and the runner's failure paths, against scripted fake agents
(no services: the fault tests with real processes are in test_faults.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from collm_serve.client import (
    AdapterRef,
    ChoiceOutput,
    DeadlineExceededError,
    EngineDeadError,
    GenerateOutput,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from collm_serve.orchestrator import AdapterPins, AgentCallError, AgentPool, EpisodeRunner
from collm_serve.tasks import get_task
from collm_serve.team import TeamConfig
from collm_serve.traces import TraceStore
from collm_serve.traces.records import SamplingRecord

V3 = AdapterRef("helper", 3, "3" * 64)
V4 = AdapterRef("helper", 4, "4" * 64)


class FakeClient:
    """Answers generate() from a script: each entry an exception to raise or an AdapterRef that
    serves the call; the last entry repeats. Pinned versions in `evicted` answer NOT_FOUND.
    Echoes the sampling asked for, as a service does, with `served` overriding fields (what a
    service resolves differently from the request, e.g. a float32 temperature)."""

    def __init__(self, script=(AdapterRef("", 0, ""),), delay: float = 0.0, evicted=(), served=None):
        self.script, self.delay, self.evicted = list(script), delay, set(evicted)
        self.served = dict(served or {})
        self.calls: list[dict] = []
        self.aborted: list[str] = []

    async def generate(self, messages=None, timeout=None, **kw):
        self.calls.append(kw)
        await asyncio.sleep(self.delay)
        if kw.get("adapter_version") in self.evicted:
            raise NotFoundError(grpc.StatusCode.NOT_FOUND, f"adapter version {kw['adapter_version']} is not loaded")
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, BaseException):
            raise step
        n = kw.get("n", 1)
        choices = [ChoiceOutput(i, f"answer {i}", [10 + i, 11], [-0.5, -0.25], "stop") for i in range(n)]
        asked = {k: kw[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "seed")}
        used = SamplingRecord(**{**asked, "n": n, **self.served})
        return GenerateOutput(kw["request_id"], choices, [1, 2, 3], step, sampling=used)

    async def abort(self, ids):
        self.aborted += ids
        return ids

    async def close(self):
        pass


def unavailable():
    return UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")


def deadline():
    return DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


def team(attempts: int = 3) -> TeamConfig:
    return TeamConfig(task="toy", agents={"helper": {"address": "fake:1"}, "main": {"address": "fake:2"}},
                      retry={"attempts": attempts, "backoff_s": 0.0})


def pool_with(**fakes) -> AgentPool:
    pool = AgentPool(team())
    for name, fake in fakes.items():
        pool.clients[name] = fake
    return pool


async def act(pool, agent="helper", pins=None, n=1):
    return await pool.act(agent, [{"role": "user", "content": "hi"}], n=n, seed=7, pins=pins, request_id="r")


async def test_unavailable_is_retried_then_succeeds():
    fake = FakeClient([unavailable(), unavailable(), V3])
    reply = await act(pool_with(helper=fake))
    assert reply.attempts == 3 and len(fake.calls) == 3
    assert len({c["request_id"] for c in fake.calls}) == 3  # a fresh request id per attempt
    assert fake.calls[-1] | {"request_id": ""} == {  # what the team asks for
        "max_tokens": 256, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 7, "n": 1, "request_id": ""}
    assert reply.sampling == SamplingRecord(temperature=0.7, top_p=0.9, top_k=0, max_tokens=256, seed=7)


async def test_retries_exhausted_raise_with_the_reason():
    fake = FakeClient([deadline()])
    with pytest.raises(AgentCallError, match=r"agent helper \(fake:1\): DEADLINE_EXCEEDED after 3 attempts"):
        await act(pool_with(helper=fake))
    assert len(fake.calls) == 3
    assert fake.aborted == [c["request_id"] for c in fake.calls]  # each timed-out try is aborted


async def test_an_engine_death_stays_the_reason_after_the_retries_that_follow_it():
    """The engine dies mid-call (cause engine_dead), then the agent is gone (connection refused):
    the episode's reason and fix name the death and the restart, not only the last UNAVAILABLE."""
    died = EngineDeadError(grpc.StatusCode.UNAVAILABLE, "the agent's engine died; the agent exits with code 3")
    fake = FakeClient([died, unavailable()])
    with pytest.raises(AgentCallError, match=r"engine died \(the agent's engine died.*then UNAVAILABLE after 3 "
                                             r"attempts: connection refused") as e:
        await act(pool_with(helper=fake))
    assert e.value.cause is died and "exited with code 3" in e.value.fix and "restart" in e.value.fix


async def test_non_transient_errors_are_not_retried():
    fake = FakeClient([InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "prompt too long")])
    with pytest.raises(AgentCallError, match="INVALID_ARGUMENT: prompt too long") as e:
        await act(pool_with(helper=fake))
    assert len(fake.calls) == 1 and e.value.attempts == 1


async def test_first_turn_pins_the_adapter_version():
    fake = FakeClient([V3])
    pool, pins = pool_with(helper=fake), AdapterPins()
    await act(pool, pins=pins)
    fake.script = [V4]  # a newer version was activated meanwhile
    reply = await act(pool, pins=pins)
    assert "adapter_version" not in fake.calls[0]
    assert fake.calls[1]["adapter_version"] == 3 and reply.selector == {"adapter_version": 3}
    assert pins.pins["helper"] == V3


async def test_base_model_pin_uses_base_model():
    fake = FakeClient([AdapterRef("", 0, "")])
    pool, pins = pool_with(helper=fake), AdapterPins()
    await act(pool, pins=pins)
    await act(pool, pins=pins)
    assert fake.calls[1]["use_base_model"] is True and "adapter_version" not in fake.calls[1]


async def test_evicted_pin_falls_back_to_active_and_says_so():
    fake = FakeClient([V3])
    pool, pins = pool_with(helper=fake), AdapterPins()
    await act(pool, pins=pins)
    fake.script, fake.evicted = [V4], {3}
    reply = await act(pool, pins=pins)
    assert "pinned adapter version 3 is no longer loaded" in reply.pin_fallback
    assert reply.attempts == 1 and pins.pins["helper"] == V4  # the fallback is the new pin
    await act(pool, pins=pins)
    assert fake.calls[-1]["adapter_version"] == 4


# -- the runner's failure paths ----------------------------------------------------------------


async def test_agent_failure_stores_failed_episode_with_reason():
    pool = pool_with(helper=FakeClient([V3]), main=FakeClient([unavailable()]))
    with TraceStore(":memory:") as store:
        runner = EpisodeRunner(get_task("toy"), "toy", pool, store)
        out = await runner.run(get_task("toy").problems("train")[0], seed=1)
        assert out.status == "failed" and "agent main (fake:2): UNAVAILABLE after 3 attempts" in out.failure_reason
        ep = store.get_episode(out.episode_id)
        assert (ep.status, ep.failure_reason, ep.turns, ep.final_return) == ("failed", out.failure_reason, [], None)


async def test_pin_fallback_is_recorded_in_the_turn():
    helper = FakeClient([V3])
    pool = pool_with(helper=helper, main=FakeClient())
    task = get_task("coding")
    problem = task.problems("train")[0]
    with TraceStore(":memory:") as store:
        runner = EpisodeRunner(task, "coding", pool, store)

        real_act = pool.act

        async def act_then_evict(agent, *a, **kw):  # version 3 disappears after turn 0
            reply = await real_act(agent, *a, **kw)
            if agent == "helper":
                helper.evicted, helper.script = {3}, [V4]
            return reply

        pool.act = act_then_evict
        out = await runner.run(problem, seed=1)
        assert out.ok, out.failure_reason
        t0, t1 = out.turns
        assert t0.action("helper").adapter_version == 3 and t1.action("helper").adapter_version == 4
        assert "orchestrator" not in t0.info
        assert "no longer loaded" in t1.info["orchestrator"]["helper"]["pin_fallback"]
        assert store.get_episode(out.episode_id).turns[1].info == t1.info


async def test_the_trace_records_the_sampling_the_service_used_not_the_request():
    served = {"temperature": 0.699999988079071, "min_tokens": 0, "stop": ("<|im_end|>",)}
    pool = pool_with(helper=FakeClient(served=served), main=FakeClient())
    task = get_task("toy")
    with TraceStore(":memory:") as store:
        out = await EpisodeRunner(task, "toy", pool, store).run(task.problems("train")[0], seed=1)
        assert out.ok, out.failure_reason
        (turn,) = store.get_episode(out.episode_id).turns[:1]
    helper, main = turn.action("helper").sampling, turn.action("main").sampling
    assert pool.sampling("helper", 1, 0)["temperature"] == 0.7  # asked for
    assert (helper.temperature, helper.stop) == (0.699999988079071, ("<|im_end|>",))  # recorded
    assert (main.temperature, main.top_p, main.max_tokens, main.n) == (0.7, 0.9, 256, 1)


async def test_cancelled_episode_rolls_back_the_turn_in_flight():
    pool = pool_with(helper=FakeClient(delay=0.0), main=FakeClient(delay=30.0))
    task = get_task("toy")
    with TraceStore(":memory:") as store:
        runner = EpisodeRunner(task, "toy", pool, store)
        play = asyncio.create_task(runner.run(task.problems("train")[0], seed=1))
        await asyncio.sleep(0.2)
        play.cancel("SIGINT")
        with pytest.raises(asyncio.CancelledError):
            await play
        (ep,) = store.iter_episodes(status=None)
        assert (ep.status, ep.failure_reason, ep.turns) == ("failed", "interrupted (SIGINT)", [])


async def test_drain_stops_at_the_turn_boundary():
    pool = pool_with(helper=FakeClient(delay=0.1), main=FakeClient(delay=0.1))
    task = get_task("coding")
    with TraceStore(":memory:") as store:
        runner = EpisodeRunner(task, "coding", pool, store)
        drain = asyncio.Event()
        play = asyncio.create_task(runner.run(task.problems("train")[0], seed=1, drain=drain))
        await asyncio.sleep(0.05)
        drain.set()  # mid turn 0: it finishes and is stored, turn 1 never starts
        out = await play
        assert out.status == "failed" and out.failure_reason == "interrupted (stopped at turn 1)"
        assert [t.turn_index for t in store.get_episode(out.episode_id).turns] == [0]
