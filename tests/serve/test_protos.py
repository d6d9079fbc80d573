"""The committed stubs must be exactly what protoc makes of the committed .proto files."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert written, "no stubs generated"
    stale = []
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = REPO / rel
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    committed_dir = REPO / "collm_serve" / "proto"
    extra = {str(p.relative_to(REPO)) for p in committed_dir.rglob("*.py*") if "__pycache__" not in p.parts}
    extra -= {str(p.relative_to(tmp_path)) for p in written}
    assert not stale, f"stale generated stubs (run python scripts/gen_protos.py): {stale}"
    assert not extra, f"committed stubs without a .proto: {sorted(extra)}"


def test_every_rpc_has_its_own_request_and_response():
    from collm_serve.proto.collm.v1 import agent_pb2

    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    for method in service.methods:
        assert method.input_type.name == f"{method.name}Request" or method.name == "GenerateStream"
        assert method.output_type.name.startswith(method.name)
