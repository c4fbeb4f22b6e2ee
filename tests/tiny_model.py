"""Tiny random-weight checkpoints for the tests, built offline: `python tests/tiny_model.py DIR`.

Also importable (tests/ is on sys.path under pytest): `make_tiny_checkpoint(out_dir, seed=0)` saves a randomly
initialised tiny Qwen2ForCausalLM with a Qwen2.5-style tokenizer (byte-level BPE, Qwen's special tokens and
ChatML chat template: tiny.build_tokenizer) and generation config, so code under test loads it exactly like a
real checkpoint (`from_pretrained`).
"""

import sys
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

# The repository root, one level up, holds tiny.py: make it importable however this file is run.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tiny  # noqa: E402


def make_tiny_checkpoint(out_dir, seed: int = 0, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                         num_kv_heads: int = 2, intermediate_size: int = 128) -> Path:
    """Save a randomly initialised tiny Qwen2ForCausalLM (+ tokenizer) to `out_dir`; returns the path."""
    tokenizer = tiny.build_tokenizer()
    config = tiny.qwen2_config(tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size)
    torch.manual_seed(seed)  # same seed -> same weights, so tests are reproducible
    return tiny.save_model_dir(Qwen2ForCausalLM(config), tokenizer, out_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_model.py DIR")
    print(make_tiny_checkpoint(sys.argv[1]))
