"""A small user model to train with `--model` (examples/llama.py) and its fast settings."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LLAMA = str(ROOT / "examples" / "llama.py") + ":llama"
SMALL = ["--model-config", "d_model=64,n_layers=1"]
# support.cli's FAST without --d-model (the built-in GPT's; --model-config sizes a --model)
FAST = ["--seq-len", "64", "--batch-size", "2", "--micro-batch-size", "2", "--eval-tokens", "4096"]
