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


def test_adapter_targets_have_presence_and_stay_wire_compatible():
    """agent.proto: a version field that is unset ("the active one", "the manifest's", "no
    version") differs from every number, and the bytes match the former plain int64 fields: an
    old client never sent its 0, so it reads as unset; its N reads as N; a new client's unset
    field is absent on the wire (an old server reads its old default 0, the same meaning)."""
    from collm_serve.proto.collm.v1 import agent_pb2 as pb

    for message, field, number in [(pb.GenerateRequest, "adapter_version", 5),
                                   (pb.LoadAdapterRequest, "version", 2),
                                   (pb.ActivateAdapterRequest, "version", 1)]:
        old_pinned = bytes([number << 3, 2])  # the old plain int64 field = 2 (varint)
        parsed = message.FromString(old_pinned)
        assert parsed.HasField(field) and getattr(parsed, field) == 2
        assert not message.FromString(b"").HasField(field)  # the old 0: never on the wire
        assert message(**{field: None}).SerializeToString() == b""
        assert message(**{field: 2}).SerializeToString() == old_pinned
        explicit_zero = message(**{field: 0})
        assert explicit_zero.HasField(field) and explicit_zero.SerializeToString() == bytes([number << 3, 0])
