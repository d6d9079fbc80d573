"""Deliberately broken agent services: proof that the reliability checks can fail.

Never imported by collm_serve. With this folder on PYTHONPATH and COLLM_BREAK=<comma list>,
a Python process patches the servicer at start-up (`sitecustomize` runs before `__main__`):

  drop_version  every AdapterRef the service returns is empty (no name, version or sha256)
  wedge         after the first request refused as INVALID_ARGUMENT, every Generate hangs
  leak          every Generate keeps 64 KiB alive for the life of the process
  no_drain      SIGTERM does not wait for in-flight requests (they are cut after 1 s)
  orphan_engine the engine processes are not armed to die with the agent (kill -9 orphans them)

    COLLM_BREAK=wedge PYTHONPATH=tests/reliability/broken python -m pytest tests/reliability
"""

from __future__ import annotations

import os

BREAKS = {b for b in os.environ.get("COLLM_BREAK", "").split(",") if b}

if BREAKS:
    import asyncio

    from collm_serve.agent import admission, service
    from collm_serve.errors import InvalidArgument
    from collm_serve.proto.collm.v1 import agent_pb2 as pb

    unknown = BREAKS - {"drop_version", "wedge", "leak", "no_drain", "orphan_engine"}
    if unknown:
        raise SystemExit(f"COLLM_BREAK: unknown fault(s) {sorted(unknown)}")

    if "drop_version" in BREAKS:
        service.adapter_ref = lambda loaded: pb.AdapterRef()

    if "wedge" in BREAKS or "leak" in BREAKS:
        _prepare, _generate = service.AgentServicer._prepare, service.AgentServicer.Generate
        _wedged: list[bool] = []
        _leaked: list[bytes] = []

        def prepare(self, request):
            if "leak" in BREAKS:
                _leaked.append(b"x" * (64 << 10))  # written, so resident
            try:
                return _prepare(self, request)
            except InvalidArgument:
                _wedged.append(True)
                raise

        async def generate(self, request, context):
            if "wedge" in BREAKS and _wedged:
                await asyncio.sleep(3600)  # until the client's deadline cancels it
            return await _generate(self, request, context)

        service.AgentServicer._prepare = prepare
        service.AgentServicer.Generate = generate

    if "no_drain" in BREAKS:
        async def wait_idle(self, timeout: float) -> bool:
            return False

        admission.Admission.wait_idle = wait_idle

    if "orphan_engine" in BREAKS:
        from collm_serve.engines import die_with_agent

        die_with_agent.protect_children = lambda: None
        die_with_agent.register = lambda: None
