"""Tiny random-weight checkpoints for the tests, built offline: `python tests/tiny_model.py DIR`.

Also importable (tests/ is on sys.path under pytest):
  make_tiny_checkpoint(out_dir, seed=0)      a tiny Qwen2ForCausalLM with a Qwen2.5-style tokenizer (byte-level BPE,
                                             Qwen's special tokens, ChatML template: tiny.build_tokenizer)
  make_family_checkpoint(out_dir, family)    the same size in another architecture (FAMILIES), with every weight,
                                             bias and norm scale random, so that each piece of the layer matters
Both are saved with save_pretrained, so code under test loads them exactly like a real checkpoint.
"""

import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

# The repository root, one level up, holds tiny.py: make it importable however this file is run.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sampler  # noqa: E402
import tiny  # noqa: E402

# Qwen3's chat template closes an empty <think> block when enable_thinking is false (the real template's ending).
QWEN3_GENERATION_PROMPT = ("{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is "
                           "defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
                           "{%- endif %}")
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # scaling that matters at 64+
# family -> (config class, its own settings). Sizes are shared: hidden 64, 2 layers, 4 query / 2 key-value heads.
FAMILIES = {
    # reproduced by the sampler
    "qwen2": ("Qwen2Config", {}),  # Qwen2 and Qwen2.5 (biases on q, k, v)
    "qwen3": ("Qwen3Config", {"head_dim": 32}),  # per-head RMSNorm on queries and keys, head_dim set apart
    "llama": ("LlamaConfig", {"rope_parameters": LLAMA3_ROPE}),  # Llama 3.x rope scaling
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),  # scaled embeddings and (1 + w) norms live inside its modules
    # refused by the load-time self-check
    "gemma2": ("Gemma2Config", {"head_dim": 16}),  # sliding-window layers, soft-capping, extra norms
    "phi3": ("Phi3Config", {}),  # fused qkv projection
    "granite": ("GraniteConfig", {"embedding_multiplier": 12.0, "logits_scaling": 8.0, "residual_multiplier": 0.2,
                                  "attention_multiplier": 0.1}),  # multipliers outside its modules
    "olmo2": ("Olmo2Config", {}),  # norms after attention and MLP, not before
}
SUPPORTED = ["qwen2", "qwen3", "llama", "mistral", "gemma"]


def make_tiny_checkpoint(out_dir, seed: int = 0, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                         num_kv_heads: int = 2, intermediate_size: int = 128) -> Path:
    """Save a randomly initialised tiny Qwen2ForCausalLM (+ tokenizer) to `out_dir`; returns the path."""
    tokenizer = tiny.build_tokenizer()
    config = tiny.qwen2_config(tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size)
    torch.manual_seed(seed)  # same seed -> same weights, so tests are reproducible
    return tiny.save_model_dir(Qwen2ForCausalLM(config), tokenizer, out_dir)


def make_family_checkpoint(out_dir, family: str, seed: int = 0) -> Path:
    """Save a tiny random model of `family` (see FAMILIES) with the Qwen-style tokenizer; returns the path."""
    class_name, settings = FAMILIES[family]
    tokenizer = tiny.build_tokenizer()
    if family == "qwen3":
        tokenizer.chat_template = tokenizer.chat_template.replace(
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}", QWEN3_GENERATION_PROMPT)
    config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=512, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # default init zeroes biases and sets norms to 1: randomise them so they matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5, generator=generator)
            else:
                param.normal_(0.0, 0.3, generator=generator)
    return tiny.save_model_dir(model, tokenizer, out_dir)


def family_report(work_dir) -> None:
    """`python tests/tiny_model.py --families`: for each family and dtype, how far the hand-written decoder's logits
    are from the model's own (relative; sampler.largest_logit_difference), and what load_model says."""
    for family in FAMILIES:
        path = make_family_checkpoint(Path(work_dir) / family, family)
        for dtype in (torch.float32, torch.bfloat16):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
            try:
                with torch.no_grad():
                    difference = f"{sampler.largest_logit_difference(model, tiny.build_tokenizer()):.1e}"
            except Exception as error:  # noqa: BLE001 (reported, as load_model reports it)
                difference = f"cannot read its layers ({type(error).__name__})"
            try:
                sampler.load_model(str(path), torch.device("cpu"), dtype)
                verdict = "loaded"
            except SystemExit as refusal:
                verdict = "refused: " + str(refusal.code).split("decoder: ", 1)[-1].split(";")[0]
            print(f"| {family} | {str(dtype).replace('torch.', '')} | {difference} | {verdict} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--families":
        with tempfile.TemporaryDirectory() as work:
            family_report(work)
    elif len(sys.argv) == 2:
        print(make_tiny_checkpoint(sys.argv[1]))
    else:
        sys.exit("usage: python tests/tiny_model.py DIR | --families")
