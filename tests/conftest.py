"""Shared setup for every test file: the repository root and tests/ on sys.path (so test files import the
project's modules and tiny_model directly), deprecation warnings as errors, and tiny random checkpoints built
offline (tests/tiny_model.py) and loaded through the same from_pretrained code a real Qwen run uses."""

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import sampler  # noqa: E402
from tiny_model import make_tiny_checkpoint  # noqa: E402


def pytest_configure(config):
    # A deprecated library API that project code calls must fail the suite now, not break users at the
    # library's next release (transformers removes what it deprecates). These warnings are raised inside the call,
    # so turning them into errors makes the traceback point at the project line that made the call.
    config.addinivalue_line("filterwarnings", "error::DeprecationWarning")
    config.addinivalue_line("filterwarnings", "error::FutureWarning")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2 checkpoint with Qwen's ChatML tokenizer."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def varied_dir(tmp_path_factory) -> Path:
    """The same architecture with larger random weights, so greedy decoding does not repeat one token and a
    comparison between two decoders actually compares something."""
    model, tokenizer = sampler.load_model(str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_raw"), seed=1)),
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
