"""Import a plain peft / TRL LoRA adapter into an agent's adapter root as its next version.

An adapter trained elsewhere (peft `save_pretrained`, TRL's `SFTTrainer`/`GRPOTrainer` with a
`peft_config`) is a folder with `adapter_config.json` + `adapter_model.safetensors` and no
`collm_manifest.json`, so no agent would load it. Importing:

1. checks, before copying anything, that peft's `base_model_name_or_path` names the agent's
   base model (the same id, a hub id or path ending in it, or the very folder the agent loads),
   that it is a LoRA (no DoRA, no extra trained modules), and that the weights are safetensors;
2. copies ONLY those two files into a staging folder `<root>/<agent>/.v<N>.import…` — tokenizer
   files TRL saves beside them stay behind, since vLLM would load a LoRA folder's tokenizer;
3. writes the manifest with the one writer the trainer uses (`manifest.write_manifest`, which
   hashes the weights), then runs the very checks an agent runs before it activates a version
   (`validate.check_adapter`: rank ≤ max_lora_rank, target modules and their shapes exist in
   the base model, only LoRA A/B tensors);
4. renames the staging folder to `<root>/<agent>/v<N>`: a reader never sees half a version,
   and an existing version is never replaced (versions are immutable).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from collm_serve.adapters.manifest import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    next_version,
    version_dir,
    write_manifest,
)
from collm_serve.adapters.validate import CheckedAdapter, base_model_shapes, check_adapter
from collm_serve.errors import CollmError

IMPORT_ALGORITHM = "imported"


class ImportAdapterError(ValueError):
    """The folder cannot become a version of this agent; the message names the fix."""


@dataclass(frozen=True)
class AgentTarget:
    """What an adapter must fit: the agent's name, base model and engine limits."""

    agent: str
    base_model_id: str  # what the agent reports and a manifest must name
    base_model_dir: Path  # the folder the agent loads (shapes are read from it)
    adapter_root: Path
    max_lora_rank: int


def peft_config(src: Path) -> dict:
    """`adapter_config.json` of a peft folder, or an error saying where the adapter is instead."""
    if not src.is_dir():
        raise ImportAdapterError(f"{src} is not a folder; give the folder peft's save_pretrained wrote")
    path = src / CONFIG_FILE
    if not path.is_file():
        nested = sorted(p.parent.name for p in src.glob(f"*/{CONFIG_FILE}"))
        hint = (f"; peft saved named adapters one level down: try {src / nested[0]}" if nested
                else "; is this a peft LoRA folder (save_pretrained output)?")
        raise ImportAdapterError(f"{src} has no {CONFIG_FILE}{hint}")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ImportAdapterError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ImportAdapterError(f"{path}: expected a JSON object")
    return config


def same_base_model(claimed: str, target: AgentTarget) -> bool:
    """peft records the base as whatever the trainer loaded: a hub id (`HuggingFaceTB/X`), a
    local folder (`/models/X`) or our own id (collm_train writes `base_model_id`)."""
    if claimed == target.base_model_id or claimed.rstrip("/").rsplit("/", 1)[-1] == target.base_model_id:
        return True
    try:
        return Path(claimed).expanduser().resolve() == target.base_model_dir.resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def _check_peft_config(src: Path, config: dict, target: AgentTarget, base_model: str | None) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ImportAdapterError(f"{src / CONFIG_FILE}: peft_type is {peft_type}; only LoRA adapters are served")
    if config.get("use_dora"):
        raise ImportAdapterError(f"{src / CONFIG_FILE}: use_dora is true; DoRA is not served (train with use_dora=False)")
    if config.get("modules_to_save"):
        raise ImportAdapterError(
            f"{src / CONFIG_FILE}: modules_to_save {config['modules_to_save']} trains whole modules, which "
            "a LoRA engine cannot swap; train with modules_to_save=None")
    claimed = config.get("base_model_name_or_path")
    if base_model is None:
        if not claimed:
            raise ImportAdapterError(
                f"{src / CONFIG_FILE} does not say which base model it was trained on "
                f"(base_model_name_or_path); pass --base-model {target.base_model_id} if it was")
        if not same_base_model(str(claimed), target):
            raise ImportAdapterError(
                f"adapter was trained on {claimed!r}, agent {target.agent!r} serves {target.base_model_id!r} "
                f"({target.base_model_dir}); import it for an agent on that model, or pass "
                f"--base-model {target.base_model_id} if {claimed!r} is the same weights under another name")
    elif base_model != target.base_model_id:
        raise ImportAdapterError(f"--base-model {base_model!r} is not agent {target.agent!r}'s base model "
                                 f"{target.base_model_id!r}")
    if not (src / WEIGHTS_FILE).is_file():
        if (src / "adapter_model.bin").is_file():
            raise ImportAdapterError(
                f"{src} holds adapter_model.bin (pickle); re-save it as safetensors: "
                "PeftModel.from_pretrained(base, DIR).save_pretrained(DIR, safe_serialization=True)")
        raise ImportAdapterError(f"{src} has no {WEIGHTS_FILE}")


def import_adapter(
    src: str | os.PathLike[str],
    target: AgentTarget,
    *,
    version: int | None = None,
    base_model: str | None = None,
) -> CheckedAdapter:
    """Copy the peft folder `src` into `target.adapter_root` as `<agent>/v<version>` (default:
    the agent's next version) with a manifest; returns what `check_adapter` verified.

    `base_model`: the user's statement that the adapter was trained on the agent's base model
    when peft's config names it differently or not at all; the shapes are still checked.
    """
    src = Path(src).expanduser()
    config = peft_config(src)
    _check_peft_config(src, config, target, base_model)
    root = target.adapter_root
    if version is None:
        version = next_version(root, [target.agent])
    if int(version) < 1:
        raise ImportAdapterError(f"--version {version} must be >= 1")
    final = version_dir(root, target.agent, version)
    if final.exists():
        raise ImportAdapterError(f"{final} exists; versions are immutable: pick another --version "
                                 f"(next free: {next_version(root, [target.agent])})")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".v{version}.import{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(src / name, staging / name)
        write_manifest(staging, name=target.agent, version=int(version), base_model=target.base_model_id,
                       algorithm=IMPORT_ALGORITHM, source=str(src.resolve()))
        checked = check_adapter(staging, base_model_id=target.base_model_id,
                                base_shapes=base_model_shapes(target.base_model_dir),
                                max_lora_rank=target.max_lora_rank, expected_version=int(version))
        try:
            os.rename(staging, final)  # fails if another import took this version meanwhile
        except OSError as e:
            raise ImportAdapterError(f"{final} appeared while importing ({e.strerror}); retry") from e
    except CollmError as e:  # the agent's own verdict, e.g. rank or a module the base lacks
        shutil.rmtree(staging, ignore_errors=True)
        raise ImportAdapterError(f"{src}: {e}") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CheckedAdapter(final, checked.manifest, checked.rank, checked.target_modules)


def target_for(config) -> AgentTarget:
    """What an agent started with `config` (collm_serve.config.AgentConfig) accepts: the same
    model folder and base-model id the server derives (collm_serve/agent/server.py)."""
    from collm_serve.models import model_id_for, resolve_model

    return AgentTarget(agent=config.name, base_model_id=model_id_for(config.model),
                       base_model_dir=resolve_model(config.model), adapter_root=config.resolved_adapter_root,
                       max_lora_rank=config.max_lora_rank)
