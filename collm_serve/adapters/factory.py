"""Make small, real LoRA adapters with a visible effect (tests, benchmarks, swap demos).

`make_adapter` fine-tunes a peft LoRA for a few steps so that, for one prompt, greedy decoding
says `target` — a change anyone can see after a hot-swap — then writes the versioned folder
(plain peft + `collm_manifest.json`). Training proper lives in `collm_train`.
"""

from __future__ import annotations

from pathlib import Path


def make_adapter(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    version: int,
    base_model_id: str,
    prompt_ids: list[int],
    target: str,
    rank: int = 8,
    steps: int = 30,
    lr: float = 5e-3,
    seed: int = 0,
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from collm_serve.adapters.manifest import write_manifest

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # steps=0: random A and B (init_lora_weights=False) — a visible change with no training cost
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules),
                                             lora_dropout=0.0, init_lora_weights=steps > 0))
    answer = tok.encode(target, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([prompt_ids + answer])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100  # learn the answer only
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    write_manifest(out, name=name, version=version, base_model=base_model_id, algorithm="sft-demo",
                   step=steps, metrics={"final_loss": float(loss.detach())})
    return out
