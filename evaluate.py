"""Score any checkpoint: greedy decoding, one sample per problem, strict 0/1 accuracy (a canonical answer that
matches, or a program that passes every test in sandbox.py). The problems and prompts are tasks.py's.

    python evaluate.py --task multiplication --model runs/sqlm/checkpoint --limit 512
    python evaluate.py --task algebra --model Qwen/Qwen2.5-3B-Instruct --data omega_linear_equations.jsonl
    python evaluate.py --task coding --model PATH --data codeforces.jsonl

Which problems: tasks.py's docstring (the built-in sets, and --data FILE for any JSON-lines file of them).
The last line printed is JSON: {"task", "n", "accuracy", "correct", "model"}.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

import rewards
import sandbox
import sampler
import tasks


# ============================================================================ scoring


def is_correct(task: str, problem: dict, completion: str) -> bool:
    """Strict 0/1: the canonical answer matches, or the program passes every test."""
    if task == "coding":
        code = rewards.extract_code(completion)
        tests = [(t["input"], t["output"]) for t in problem["tests"]]
        return code is not None and sandbox.pass_fraction(code, tests) == 1.0
    return rewards.extract_answer(completion) == rewards.canonical_answer(str(problem["answer"]))


def score(model, tokenizer, task: str, problems: list[dict], stop_ids: list[int], max_new_tokens: int,
          batch_size: int = 64) -> dict:
    """Greedy decoding, one sample per problem, strict accuracy. `completions` and the per-problem `is_correct`
    are returned for callers (the CLI prints only the numbers)."""
    key = "problem" if task == "coding" else "question"
    prompts = [sampler.chat_prompt_ids(tokenizer, tasks.solver_prompt(task, p[key]), tasks.solver_system(task))
               for p in problems]
    was_training = model.training
    model.eval()
    completions = sampler.sample_in_chunks(model, prompts, max_new_tokens, 0.0, stop_ids,
                                           sampler.pad_token_id(tokenizer, stop_ids), batch_size)
    model.train(was_training)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    correct = [is_correct(task, p, t) for p, t in zip(problems, texts)]
    return {"task": task, "n": len(problems), "accuracy": sum(correct) / max(len(problems), 1),
            "correct": sum(correct), "completions": texts, "is_correct": correct}


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when there is a GPU, else cpu. Asking for cuda without one is refused in one sentence."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda needs a GPU and none is visible here: use auto or cpu.")
    return torch.device(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score a model with greedy decoding and strict 0/1 accuracy.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", required=True, choices=tasks.TASKS, help="which task's problems and prompts")
    parser.add_argument("--model", required=True, help="hub name or local checkpoint directory")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N problems (N >= 1)")
    parser.add_argument("--data", default=None, help="JSON-lines file of problems instead of the built-in set")
    parser.add_argument("--tiny", action="store_true",
                        help="older spelling of --data MODEL/test.jsonl (the CPU demo model ships its test set there)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    parser.add_argument("--batch-size", type=int, default=64, help="problems decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=0,
                        help="response budget; 0 = the model's generation_config.max_new_tokens, else the task's")
    parser.add_argument("--show", type=int, default=0, help="print the first N completions to stderr")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1 (leave it out to score every problem)")
    if args.batch_size < 1 or not 0 <= args.max_new_tokens <= tasks.MAX_NEW_TOKENS or args.show < 0:
        parser.error(f"--batch-size must be at least 1, --show at least 0, and --max-new-tokens from 0 to "
                     f"{tasks.MAX_NEW_TOKENS}")
    device = resolve_device(args.device)
    data = str(Path(sampler.model_location(args.model)) / "test.jsonl") if args.tiny else args.data
    problems = tasks.load_problems(args.task, args.limit, data)  # checked before the (slow) model load
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = sampler.load_model(args.model, device, dtype)
    stop_ids = sampler.stop_token_ids(model, tokenizer)
    result = score(model, tokenizer, args.task, problems, stop_ids,
                   tasks.max_new_tokens(args.task, model, args.max_new_tokens), args.batch_size)
    for text in result["completions"][:args.show]:
        print("---\n" + text, file=sys.stderr)
    del result["completions"], result["is_correct"]  # per-problem lists: for callers, not for the JSON line
    print(json.dumps({**result, "model": args.model}))


if __name__ == "__main__":
    main()
