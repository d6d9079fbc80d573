"""vLLM-CPU engine bug 4: a seeded request whose prompt is prefilled over several steps killed
the engine ("CPU Generator does not use offset"); `collm_cpu_seeded_rewind` rewinds the
generator the CPU way (collm_serve/engines/vllm_cpu_seeded_rewind.py).

The scenario: several seeded requests with ~1,500-token prompts reach the engine together, so
their prompts cannot all fit into one step's token budget (2048) and some are split across steps
(each split step's sample is discarded and the generator wound back). It runs twice:
- with every CoLLM plugin: all requests answer, and each one's tokens are exactly those it gets
  alone (a discarded step consumed no randomness: seeded sampling stays reproducible);
- with every CoLLM plugin but the rewind (VLLM_PLUGINS names the others): the engine dies with
  vLLM's error, proving the scenario reaches the path the fix guards.
"""

from __future__ import annotations

import threading

import pytest

from collm_serve.client import AgentClient, AgentError, EngineDeadError

N_REQUESTS = 6
PROMPT_WORDS = 300  # ~1,500 tokens with the chat template: two such prompts exceed a 2048-token step


def prompt(i: int) -> list[dict]:
    words = " ".join(f"w{(i * 7919 + j * 31) % 9973}" for j in range(PROMPT_WORDS))
    return [{"role": "user", "content": f"Request {i}. Repeat the last word: {words}"}]


def ask(agent, i: int) -> list[int]:
    with AgentClient(agent.address, timeout=300, retries=0) as c:  # each error as the service sent it
        out = c.generate(messages=prompt(i), max_tokens=12, min_tokens=12, temperature=0.6, top_p=0.6,
                         seed=100 + i)
    return list(out.choices[0].token_ids)


def ask_together(agent) -> tuple[dict, dict]:
    """All requests at once (released by one barrier); {i: token ids}, {i: error}."""
    barrier = threading.Barrier(N_REQUESTS)
    answers, errors = {}, {}

    def run(i):
        barrier.wait()
        try:
            answers[i] = ask(agent, i)
        except AgentError as e:
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, errors


@pytest.mark.parametrize("rewind", ["on", "off"])
def test_seeded_requests_split_over_steps(tmp_path, rewind):
    from collm_serve.launcher import AgentProcess
    from tests.conftest import write_agents_yaml

    cfg = write_agents_yaml(tmp_path / "agents.yaml", {"helper": {
        "engine": "vllm", "model": "embedded:tiny-llama", "port": 0, "max_model_len": 2048,
        "max_prompt_tokens": 1900, "kv_cache_bytes": 64 << 20, "state_dir": str(tmp_path / "state")}})
    env = {"VLLM_PLUGINS": "collm_die_with_agent,collm_cpu_lora_fix"} if rewind == "off" else {}
    log = tmp_path / "agent.log"
    agent = AgentProcess("helper", config=cfg, env=env, log_path=log).start()
    try:
        answers, errors = ask_together(agent)
        if rewind == "on":
            assert errors == {}, f"requests failed: {errors}; log tail: {log.read_text()[-2000:]}"
            alone = {i: ask(agent, i) for i in range(N_REQUESTS)}
            assert answers == alone, "a seeded request drew other tokens in a batch than alone"
        else:
            agent.proc.wait(timeout=120)  # an engine death is fatal: the agent exits (code 3)
            assert errors, "without the rewind the engine should die (did vLLM fix it?)"
            assert "CPU Generator does not use offset" in log.read_text()  # vLLM's traceback, in the log
            # the requests in flight are told the cause (collm-cause: engine_dead), not only UNAVAILABLE
            assert any(isinstance(e, EngineDeadError) for e in errors.values()), errors
    finally:
        agent.stop()
