"""Write a tiny random Qwen2 checkpoint for tests: `python tests/tiny_model.py DIR`.

Also importable: `from tiny_model import make_tiny_checkpoint` (tests/ is on sys.path under pytest).
The checkpoint is built offline by tiny.py at the repository root; see there for what it contains.
"""

import sys
from pathlib import Path

# tiny.py lives at the repository root, one level up; make it importable however this file is run.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import tiny  # noqa: E402  (needs the sys.path line above)


def make_tiny_checkpoint(out_dir, seed: int = 0) -> Path:
    """Save a randomly initialised tiny Qwen2ForCausalLM with its tokenizer to `out_dir`; returns the path."""
    return tiny.build_random_model(out_dir, seed=seed)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_model.py DIR")
    print(make_tiny_checkpoint(sys.argv[1]))
