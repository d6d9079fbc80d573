"""The agent service: one process serving one agent (or several packed on one engine).

`server` builds the process (engine, adapter registry, admission, gRPC server via
collm_serve/rpc.py), `service` is the AgentService servicer (validation, admission, adapter
pinning, engine streaming), `admission` bounds concurrency, `http_api` is the OpenAI-compatible
HTTP front end over the same generation path, `packing` decides which agents may share an engine.
Shared with the orchestrator and kept beside them in `collm_serve/`: `rpc`, `auth`, `metrics`.
"""
