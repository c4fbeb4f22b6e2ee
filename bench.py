"""Time the project's sampler against model.generate, and one full SQLM training step, on one model.

    python bench.py --model runs/tiny --device cpu                  # any checkpoint (small sizes on CPU)
    python bench.py --config-only qwen2.5-1.5b --device cuda        # random weights, real Qwen2.5 shapes

Both decoders get the same prompts, batch and lengths, with stopping disabled so every row decodes exactly
--new-tokens tokens (a fair tokens/s). The training step is what sqlm.py does per step: sample
--step-sequences completions in chunks of --batch, then one GRPO update over all of them. The last line
printed is JSON.
"""

import argparse
import json
import resource
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import evaluate
import sampler
import sqlm

# The real Qwen2.5 Instruct shapes (from their config.json), so no weights need downloading.
QWEN25_CONFIGS = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, tie_word_embeddings=True),
}
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}  # the cards' datasheet memory bandwidth
# Default sizes: the paper's batch and lengths on a GPU; on CPU a size a laptop finishes in about a minute.
SIZES = {
    "cuda": dict(batch=256, prompt_tokens=128, new_tokens=1024, step_sequences=1280),
    "cpu": dict(batch=32, prompt_tokens=32, new_tokens=64, step_sequences=64),
}


def random_qwen(name: str, dtype: torch.dtype, device: torch.device):
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                         use_sliding_window=False, **QWEN25_CONFIGS[name])
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(config).to(dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory or hub name")
    parser.add_argument("--config-only", choices=sorted(QWEN25_CONFIGS), help="random weights of a real shape")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    # Sizes default to the paper's on CUDA, and to a small laptop-sized run on CPU (see SIZES).
    parser.add_argument("--batch", type=int, help="sequences decoded together (rollout chunk)")
    parser.add_argument("--prompt-tokens", type=int)
    parser.add_argument("--new-tokens", type=int, help="response length (the paper's arithmetic budget: 1024)")
    parser.add_argument("--step-sequences", type=int, help="paper: 64 prompts x 4 proposals + 256 x 4 answers")
    parser.add_argument("--micro-batch-tokens", type=int, default=sqlm.Config.micro_batch_tokens)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-cuda-graph", action="store_true")
    parser.add_argument("--skip-generate", action="store_true", help="skip the model.generate baseline")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.config_only):
        raise SystemExit("error: pass exactly one of --model DIR and --config-only NAME.")
    sizes = ("batch", "prompt_tokens", "new_tokens", "step_sequences", "micro_batch_tokens")
    too_small = [f"--{name.replace('_', '-')}" for name in sizes if getattr(args, name) is not None
                 and getattr(args, name) < 1]
    if too_small:
        raise SystemExit(f"error: {', '.join(too_small)} must be at least 1.")
    device = evaluate.resolve_device(args.device)
    for name, value in SIZES[device.type].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    low = torch.bfloat16 if device.type == "cuda" else torch.float32

    # The same three models sqlm.main holds: fp32 policy, low-precision sampling copy, frozen reference.
    if args.model:
        policy, sampling, reference, _ = sampler.load_for_training(
            args.model, weights=args.model, device=device, with_reference=True,
            gradient_checkpointing=args.gradient_checkpointing)
    else:
        policy = random_qwen(args.config_only, torch.float32, device)
        sampling = random_qwen(args.config_only, low, device) if device.type == "cuda" else policy
        reference = random_qwen(args.config_only, low, device)
        if args.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        policy.config.use_cache = False
    policy.eval()
    sampling.eval()
    vocab = policy.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, vocab, (args.prompt_tokens,), generator=generator).tolist()
               for _ in range(args.batch)]
    tokens = args.batch * args.new_tokens

    # 1. Our sampler, no stop tokens so every row runs the full length. A short warm-up first (graph capture).
    sampler.sample(sampling, prompts[:8], 8, 1.0, [], 0, cuda_graph=not args.no_cuda_graph)
    torch.manual_seed(0)
    completions, sampler_seconds = timed(device, lambda: sampler.sample(
        sampling, prompts, args.new_tokens, 1.0, [], 0, cuda_graph=not args.no_cuda_graph))
    assert all(len(c) == args.new_tokens for c in completions)

    # 2. model.generate on the same batch and lengths (what TRL's GRPO trainer uses without vLLM).
    generate_seconds = float("nan")
    if not args.skip_generate:
        input_ids = torch.tensor(prompts, device=device)
        sampling.generation_config.eos_token_id = None  # never stop early
        sampling.generation_config.pad_token_id = 0
        run_generate = lambda n: sampling.generate(input_ids=input_ids,  # noqa: E731
                                                   attention_mask=torch.ones_like(input_ids), max_new_tokens=n,
                                                   min_new_tokens=n, do_sample=True, top_k=0, top_p=1.0,
                                                   temperature=1.0)
        run_generate(8)
        generated, generate_seconds = timed(device, lambda: run_generate(args.new_tokens))
        assert generated.shape[1] == args.prompt_tokens + args.new_tokens

    # 3. One full training step at the paper's size: rollout of every sequence, then the GRPO update.
    if device.type == "cuda":
        torch.cuda.empty_cache()
    config = sqlm.Config(micro_batch_tokens=args.micro_batch_tokens, mini_batch_size=128, beta=0.001)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.01)
    step_prompts = [prompts[i % len(prompts)] for i in range(args.step_sequences)]

    def training_step():
        answers = sampler.sample_in_chunks(sampling, step_prompts, args.new_tokens, 1.0, [], 0, args.batch,
                                           cuda_graph=not args.no_cuda_graph)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        episodes = [sqlm.Episode(p, a, 0.0, advantage=float(i % 3 - 1))  # made-up advantages: timing only
                    for i, (p, a) in enumerate(zip(step_prompts, answers))]
        policy.train()
        update = sqlm.update_policy(config, policy, reference, optimizer, episodes, device)
        if sampling is not policy:
            sampler.copy_weights(policy, sampling)
        return update

    update, step_seconds = timed(device, training_step)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    result = dict(
        model=args.model or args.config_only, device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        batch=args.batch, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
        sampler_tokens_per_s=tokens / sampler_seconds, generate_tokens_per_s=tokens / generate_seconds,
        ratio_vs_generate=generate_seconds / sampler_seconds, step_seconds=step_seconds,
        step_sequences=args.step_sequences, optimizer_steps=update["optimizer_steps"], peak_memory_gb=peak,
    )
    if device.type == "cuda":
        # Every decode step must read all weights once: the memory-bandwidth bound on a step's time.
        weight_bytes = sum(p.numel() * p.element_size() for p in sampling.parameters())
        bandwidth = next((v for k, v in HBM_BYTES_PER_S.items() if k in result["device"]), None)
        if bandwidth:
            result["bandwidth_bound_share"] = (weight_bytes / bandwidth) / (sampler_seconds / args.new_tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
