"""Checks an adapter folder must pass before any engine sees it.

A failure raises the domain error whose status code says whose fault it is: the path is outside
the adapter root (PERMISSION_DENIED), missing (NOT_FOUND), the folder is not a well-formed
adapter (INVALID_ARGUMENT: files, safetensors, sha256, manifest), or it is well-formed but does
not fit this service (FAILED_PRECONDITION: base model, rank, target modules, shapes).
Only file headers are read (safetensors metadata), never the tensors' data into torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from collm_serve.adapters.manifest import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterManifest,
    read_manifest,
    sha256_file,
)
from collm_serve.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied


@dataclass(frozen=True)
class CheckedAdapter:
    path: Path
    manifest: AdapterManifest
    rank: int
    target_modules: tuple[str, ...]


def resolve_inside(root: Path, path: str) -> Path:
    """Resolve `path` (relative to `root` if relative) and refuse anything outside `root`."""
    if not path:
        raise InvalidArgument("path", "adapter path is empty")
    if "\x00" in path:
        raise InvalidArgument("path", "adapter path contains a NUL byte")
    candidate = Path(path)
    try:  # a name too long for the file system or a symlink loop is a bad path, not a crash
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if resolved != root and root not in resolved.parents:
            raise PermissionDenied(f"adapter path {path!r} is outside the adapter root {root}")
        if not resolved.is_dir():
            raise NotFound(f"adapter folder {resolved} does not exist")
    except (OSError, RuntimeError) as e:
        raise InvalidArgument("path", f"unusable adapter path: {e}") from e
    return resolved


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header (8-byte length + JSON), without torch."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100 << 20:
                raise ValueError(f"header length {size} is implausible")
            header = json.loads(f.read(size))
            f.seek(0, 2)
            file_len = f.tell()
        shapes = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            if end > file_len - 8 - size or start > end:
                raise ValueError(f"tensor {name} lies beyond the end of the file (truncated?)")
            shapes[name] = tuple(meta["shape"])
        return shapes
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidArgument("path", f"{path.name} is not a readable safetensors file: {e}") from e


def base_model_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        shapes.update(_tensor_shapes(file))
    return shapes


_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def check_adapter(
    path: Path,
    *,
    base_model_id: str,
    base_shapes: dict[str, tuple[int, ...]],
    max_lora_rank: int,
    expected_version: int = 0,
) -> CheckedAdapter:
    for required in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE):
        if not (path / required).is_file():
            raise InvalidArgument("path", f"{path} lacks {required}")
    try:
        manifest = read_manifest(path)
    except (ValueError, FileNotFoundError) as e:
        raise InvalidArgument("path", str(e)) from e
    if expected_version and manifest.version != expected_version:
        raise InvalidArgument(
            "version", f"request says v{expected_version} but the manifest says v{manifest.version}"
        )
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidArgument("path", f"{CONFIG_FILE} is not valid JSON: {e}") from e
    shapes = _tensor_shapes(path / WEIGHTS_FILE)
    digest = sha256_file(path / WEIGHTS_FILE)
    if digest != manifest.sha256:
        raise InvalidArgument(
            "path", f"sha256 of {WEIGHTS_FILE} is {digest[:12]}…, the manifest says "
            f"{manifest.sha256[:12]}… (corrupted or modified after training)"
        )
    if manifest.base_model != base_model_id:
        raise FailedPrecondition(
            f"adapter was trained on {manifest.base_model!r}, this agent serves {base_model_id!r}"
        )
    ranks = [int(config.get("r", 0))] + [int(v) for v in (config.get("rank_pattern") or {}).values()]
    rank = max(ranks)
    if rank < 1:
        raise InvalidArgument("path", f"{CONFIG_FILE} has no valid LoRA rank r")
    if rank > max_lora_rank:
        raise FailedPrecondition(f"adapter rank {rank} exceeds this engine's max_lora_rank {max_lora_rank}")
    if not shapes:
        raise InvalidArgument("path", f"{WEIGHTS_FILE} holds no tensors")
    modules: set[str] = set()
    for name, shape in shapes.items():
        suffix = next((s for s in _LORA_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            raise FailedPrecondition(f"tensor {name} is not a LoRA A/B weight (only LoRA is served)")
        module = name.removeprefix("base_model.model.")[: -len(suffix)]
        base = base_shapes.get(module + ".weight")
        if base is None:
            raise FailedPrecondition(f"target module {module} does not exist in {base_model_id}")
        if len(shape) != 2 or len(base) != 2:
            raise FailedPrecondition(f"tensor {name} has shape {shape}; expected a matrix")
        if suffix == ".lora_A.weight" and shape[1] != base[1]:
            raise FailedPrecondition(f"{name}: input size {shape[1]} != base {module} input size {base[1]}")
        if suffix == ".lora_B.weight" and shape[0] != base[0]:
            raise FailedPrecondition(f"{name}: output size {shape[0]} != base {module} output size {base[0]}")
        modules.add(module.rsplit(".", 1)[-1])
    return CheckedAdapter(path, manifest, rank, tuple(sorted(modules)))
