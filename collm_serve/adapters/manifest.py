"""Adapter manifest: `collm_manifest.json` next to a plain peft LoRA folder.

The folder stays loadable by peft (`PeftModel.from_pretrained`) and vLLM (`LoRARequest`): the
manifest only adds what a service needs to verify before it activates a version — who it is
(name, version), what it was trained on (base model) and that the weights are the ones the
trainer wrote (sha256 of `adapter_model.safetensors`).

Layout of an adapter root: `<root>/<agent>/v<N>/`, one immutable folder per version. The
trainer publishes into it (collm_train/trainer.py `save_adapters`) and `collm-serve
import-adapter` copies foreign peft/TRL adapters into it (importer.py); both write the manifest
with `write_manifest` below and number versions with `next_version`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "collm_manifest.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "collm-adapter/1"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class AdapterManifest:
    name: str  # agent / adapter family, e.g. "helper"
    version: int  # >= 1, monotonically increasing per name
    sha256: str  # of adapter_model.safetensors
    base_model: str  # base model id as the service reports it
    algorithm: str = ""
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    format: str = FORMAT
    source: str = ""  # where the weights came from when imported (`collm-serve import-adapter`)

    def __post_init__(self) -> None:
        if not self.name or "@" in self.name or "/" in self.name:
            raise ValueError(f"adapter name {self.name!r} must be non-empty without '@' or '/'")
        if int(self.version) < 1:
            raise ValueError(f"adapter version {self.version!r} must be >= 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def version_dir(root: str | os.PathLike[str], agent: str, version: int) -> Path:
    """`<root>/<agent>/v<version>`: where version `version` of `agent` lives."""
    return Path(root) / agent / f"v{int(version)}"


def next_version(root: str | os.PathLike[str], agents: list[str]) -> int:
    """One version number for the whole team: 1 + the highest existing version of any agent.

    A team publishes under one number so `collm-serve swap --team --version N` finds every
    agent's folder; staging folders (`.v3.tmp…`) do not count. The one numbering of adapter
    versions: the trainer publishes with it (collm_train.trainer.Trainer.save_adapters, which
    sets Trainer.version, the learner's version that staleness is measured from) and so does
    `collm-serve import-adapter`.
    """
    highest = 0
    for agent in agents:
        for d in (Path(root) / agent).glob("v*"):
            if d.is_dir() and d.name[1:].isdigit():
                highest = max(highest, int(d.name[1:]))
    return highest + 1


def read_manifest(adapter_dir: str | os.PathLike[str]) -> AdapterManifest:
    """Read and type-check a manifest; raises FileNotFoundError / ValueError naming the problem."""
    path = Path(adapter_dir) / MANIFEST_FILE
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable manifest ({e})") from e
    known = set(AdapterManifest.__dataclass_fields__)
    missing = {"name", "version", "sha256", "base_model"} - raw.keys()
    if missing:
        raise ValueError(f"{path}: manifest lacks {sorted(missing)}")
    try:
        return AdapterManifest(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def write_manifest(adapter_dir: str | os.PathLike[str], **fields: Any) -> AdapterManifest:
    """Hash the weights already saved in `adapter_dir` and write the manifest (atomically)."""
    adapter_dir = Path(adapter_dir)
    manifest = AdapterManifest(sha256=sha256_file(adapter_dir / WEIGHTS_FILE), **fields)
    tmp = adapter_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, adapter_dir / MANIFEST_FILE)
    return manifest
