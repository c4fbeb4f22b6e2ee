"""Benchmarks and a CLI to score any checkpoint with greedy decoding and strict 0/1 accuracy.

    python evaluate.py --task multiplication --model runs/sqlm/checkpoint --limit 512
    python evaluate.py --task algebra --model Qwen/Qwen2.5-3B-Instruct --data omega_linear_equations.jsonl
    python evaluate.py --task coding --model PATH --data codeforces.jsonl

Which problems:
  multiplication  4,096 problems generated TinyZero-style, as in the paper (seed 1, deduplicated).
  algebra         OMEGA's linear-equation test set cannot be downloaded here, so by default a deterministic
                  generator of OMEGA-style word problems (one or two unknowns, integer coefficients, unique
                  rational solutions); --data FILE.jsonl with {"question", "answer"} lines for the real set.
  coding          data/coding_eval.jsonl, original problems written for this project (a smoke test, not the
                  paper's 123 Codeforces problems); --data FILE.jsonl with {"problem", "tests"} lines.
  --tiny          the CPU demo's distribution instead (tiny.py: 2- or 3-digit x 1-digit multiplication), 500
                  problems whose operand pairs the tiny base never saw; on by default with --model tiny.
The last line printed is JSON: {"task", "n", "accuracy", ...}.
"""

import argparse
import json
import random
import sys
from fractions import Fraction
from pathlib import Path

import torch

import rewards
from sqlm import (TASK_MAX_NEW_TOKENS, TASKS, TINY_MAX_NEW_TOKENS, chat_prompt_ids, load_model, pad_token_id,
                  resolve_device, sample_in_chunks, solver_prompt, stop_token_ids)

CODING_EVAL_FILE = Path(__file__).resolve().parent / "data" / "coding_eval.jsonl"
TEST_SEED = 1  # the test sets; validation during training uses another seed (see VALIDATION_SEED)
VALIDATION_SEED = 2


# ============================================================================ problem sets


def multiplication_problems(n: int = 4096, seed: int = TEST_SEED) -> list[dict]:
    """TinyZero-style: each operand has 1 digit w.p. 1/4, 2 digits w.p. 1/4, 3 digits w.p. 1/2; no duplicates."""
    rng = random.Random(seed)
    seen, problems = set(), []
    while len(problems) < n:
        a, b = (rng.randint(10 ** (d - 1), 10**d - 1) for d in rng.choices([1, 2, 3], weights=[1, 1, 2], k=2))
        if (a, b) in seen:
            continue
        seen.add((a, b))
        problems.append({"question": f"{a} * {b}", "answer": str(a * b)})
    return problems


def _fraction_text(value: Fraction) -> str:
    return rewards.canonical_number(value)


def _linear_problem(rng: random.Random) -> tuple[str, str] | None:
    """One OMEGA-style linear-equation word problem and its canonical answer (None = retry: not unique)."""
    name = rng.choice(["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ines", "Jon"])
    kind = rng.randrange(7)
    a, b, c, d = (rng.randint(2, 19) for _ in range(4))
    if kind == 0:  # ax + b = c, answer may be a fraction
        total = rng.randint(b + 1, b + 200)
        return (f"A number is multiplied by {a} and then {b} is added; the result is {total}. What is the number?",
                _fraction_text(Fraction(total - b, a)))
    if kind == 1:  # ax + b = cx + d with a != c
        if a == c:
            return None
        return (f"Solve for x: {a}x + {b} = {c}x + {d}.", _fraction_text(Fraction(d - b, a - c)))
    if kind == 2:  # rectangle perimeter, width unknown
        width = rng.randint(1, 40)
        perimeter = 2 * (2 * width + a)
        return (f"The perimeter of a rectangle is {perimeter} meters and its length is {a} meters more than its "
                f"width. What is the width in meters?", str(width))
    if kind == 3:  # tickets: two unknowns with integer solution
        adults, children = rng.randint(1, 60), rng.randint(1, 60)
        price_adult, price_child = a + 5, rng.randint(1, a + 4)
        return (f"A theater sold {adults + children} tickets for a total of {adults * price_adult + children * price_child} "
                f"dollars. Adult tickets cost {price_adult} dollars and child tickets cost {price_child} dollars. How many "
                f"adult and child tickets were sold? Give the answer as (adults, children).", f"({adults}, {children})")
    if kind == 4:  # sum and difference
        larger, smaller = rng.randint(-50, 100), rng.randint(-100, 49)
        if larger <= smaller:
            return None
        return (f"The sum of two numbers is {larger + smaller} and their difference is {larger - smaller}. "
                f"Find the two numbers. Give the answer as (larger, smaller).", f"({larger}, {smaller})")
    if kind == 5:  # a general 2x2 system by Cramer's rule
        e, f = rng.randint(-30, 30), rng.randint(-30, 30)
        determinant = a * d - b * c
        if determinant == 0:
            return None
        x, y = Fraction(e * d - b * f, determinant), Fraction(a * f - e * c, determinant)
        return (f"Solve the system of equations {a}x + {b}y = {e} and {c}x + {d}y = {f}. Give the answer as (x, y).",
                f"({_fraction_text(x)}, {_fraction_text(y)})")
    # kind 6: ages, one unknown
    years = rng.randint(2, 15)
    child = rng.randint(2, 30)
    parent = a * child + (a - 1) * years  # then parent + years == a * (child + years)
    return (f"{name}'s mother is {parent} years old. In {years} years she will be {a} times as old as {name}. "
            f"How old is {name} now?", str(child))


def algebra_problems(n: int = 100, seed: int = TEST_SEED) -> list[dict]:
    """Deterministic OMEGA-style linear-equation word problems with unique rational answers."""
    rng = random.Random(seed)
    seen, problems = set(), []
    while len(problems) < n:
        made = _linear_problem(rng)
        if made and made[0] not in seen:
            seen.add(made[0])
            problems.append({"question": made[0], "answer": made[1]})
    return problems


def read_jsonl(path: str | Path) -> list[dict]:
    try:
        lines = Path(path).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: cannot read problems from {str(path)!r} ({error}); pass a JSON-lines file.")


def tiny_problems(split: str = "test") -> list[dict]:
    """The tiny demo's held-out problems (tiny.py): operand pairs never seen in its pretraining, in any role."""
    import tiny

    pairs = tiny.heldout_problems() if split == "test" else tiny.validation_problems()
    return [{"question": question, "answer": str(answer)} for question, answer in pairs]


def load_problems(task: str, limit: int | None = None, data: str | None = None, seed: int = TEST_SEED,
                  tiny: bool = False) -> list[dict]:
    """The task's problem set (or --data, or the tiny demo's held-out set), first `limit` problems."""
    if tiny and task != "multiplication":
        raise SystemExit("error: the tiny demo model only knows --task multiplication.")
    if data:
        problems = read_jsonl(data)
        key = "problem" if task == "coding" else "question"
        if not all(key in p and ("tests" if task == "coding" else "answer") in p for p in problems):
            wanted = '{"problem", "tests"}' if task == "coding" else '{"question", "answer"}'
            raise SystemExit(f"error: every line of {data!r} needs the keys {wanted} for --task {task}.")
    elif tiny:
        problems = tiny_problems("test")
    elif task == "multiplication":
        problems = multiplication_problems(seed=seed)
    elif task == "algebra":
        problems = algebra_problems(seed=seed)
    elif task == "coding":
        problems = read_jsonl(CODING_EVAL_FILE)
    else:
        raise SystemExit(f"error: unknown --task {task!r}: choose one of {', '.join(TASKS)}.")
    return problems[:limit] if limit else problems


def validation_problems(task: str, limit: int, tiny: bool = False) -> list[dict]:
    """Problems for choosing checkpoints during training: generated from VALIDATION_SEED, with every problem
    of the test set removed, so model selection never sees a test problem."""
    if tiny:  # the tiny demo's validation pairs: disjoint from its test pairs by construction
        return tiny_problems("validation")[:limit]
    if task == "coding":  # no generator: hold out the last problems of the shipped set
        return read_jsonl(CODING_EVAL_FILE)[-min(limit, 8):]
    test = {p["question"] for p in load_problems(task)}
    return [p for p in load_problems(task, seed=VALIDATION_SEED) if p["question"] not in test][:limit]


# ============================================================================ scoring


def is_correct(task: str, problem: dict, completion: str) -> bool:
    """Strict 0/1: the canonical answer matches, or the program passes every test."""
    if task == "coding":
        import sandbox

        code = rewards.extract_code(completion)
        tests = [(t["input"], t["output"]) for t in problem["tests"]]
        return code is not None and sandbox.pass_fraction(code, tests) == 1.0
    return rewards.extract_answer(completion) == rewards.canonical_answer(str(problem["answer"]))


def score(model, tokenizer, task: str, problems: list[dict], stop_ids: list[int], max_new_tokens: int = 0,
          batch_size: int = 64) -> dict:
    """Greedy decoding, one sample per problem."""
    key = "problem" if task == "coding" else "question"
    prompts = [chat_prompt_ids(tokenizer, solver_prompt(task, p[key])) for p in problems]
    was_training = model.training
    model.eval()
    completions = sample_in_chunks(model, prompts, max_new_tokens or TASK_MAX_NEW_TOKENS[task], 0.0, stop_ids,
                                   pad_token_id(tokenizer, stop_ids), batch_size)
    model.train(was_training)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    correct = [is_correct(task, p, t) for p, t in zip(problems, texts)]
    return {"task": task, "n": len(problems), "accuracy": sum(correct) / max(len(problems), 1),
            "correct": sum(correct), "completions": texts, "is_correct": correct}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score a model with greedy decoding and strict accuracy.")
    parser.add_argument("--task", required=True, help="multiplication | algebra | coding")
    parser.add_argument("--model", required=True, help="hub name or local checkpoint directory")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N problems")
    parser.add_argument("--data", default=None, help="JSON-lines file of problems instead of the built-in set")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=64, help="problems decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0 = the task's default")
    parser.add_argument("--show", type=int, default=0, help="print the first N completions")
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                        help="score on the tiny demo's held-out problems (default: on with --model tiny)")
    args = parser.parse_args(argv)
    tiny = args.model == "tiny" if args.tiny is None else args.tiny
    if args.task not in TASKS:
        raise SystemExit(f"error: unknown --task {args.task!r}: choose one of {', '.join(TASKS)}.")
    if args.device not in ("auto", "cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        raise SystemExit(f"error: --device {args.device!r} is not available here: use auto, cpu or cuda (with a GPU).")
    device = resolve_device(args.device)
    problems = load_problems(args.task, args.limit, args.data, tiny=tiny)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = load_model(args.model, device, dtype)
    # The tiny base answers in at most 66 tokens; a short budget keeps a rambling row from costing 1,024 CPU steps.
    max_new_tokens = args.max_new_tokens or (TINY_MAX_NEW_TOKENS if tiny else 0)
    result = score(model, tokenizer, args.task, problems, stop_token_ids(model, tokenizer), max_new_tokens,
                   args.batch_size)
    for text in result["completions"][:args.show]:
        print("---\n" + text, file=sys.stderr)
    del result["completions"], result["is_correct"]  # per-problem lists: for callers, not for the JSON line
    print(json.dumps({**result, "model": args.model}))


if __name__ == "__main__":
    main()
