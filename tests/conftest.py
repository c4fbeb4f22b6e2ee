"""Shared fixtures: tiny random Qwen2 checkpoints built offline (tests/tiny_model.py), loaded through the
same from_pretrained code a real Qwen run uses."""

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_model import make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2 checkpoint with Qwen's ChatML tokenizer."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def varied_dir(tmp_path_factory) -> Path:
    """The same architecture with larger random weights, so greedy decoding does not repeat one token and a
    comparison between two decoders actually compares something."""
    import sqlm

    model, tokenizer = sqlm.load_model(str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_raw"), seed=1)),
                                       torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3, generator=generator)
    out = tmp_path_factory.mktemp("varied")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
