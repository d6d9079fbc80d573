"""LoRA adapter versions: a plain peft folder plus a small manifest (see manifest.py)."""
