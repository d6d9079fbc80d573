"""CoLLM serving side: agent gRPC services, orchestrator, tasks and traces.

Importing this package must stay cheap (no torch, no vLLM): the engines are loaded lazily by name.
"""

__version__ = "0.1.0"
