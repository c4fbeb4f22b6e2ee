"""The tasks, as the model meets them: the prompts of both roles, the response budgets, and the problem sets the
solver is scored on (test) and checkpoints are chosen on (validation). sqlm.py trains with these, evaluate.py
scores with them. Imports rewards (a problem's canonical answer) and no other project file.

Which problems:
  multiplication  4,096 problems generated TinyZero-style, as in the paper (seed 1, deduplicated).
  algebra         OMEGA's linear-equation test set cannot be downloaded here, so by default a deterministic
                  generator of OMEGA-style word problems (one or two unknowns, integer coefficients, unique
                  rational solutions); --data FILE.jsonl with {"question", "answer"} lines for the real set.
  coding          data/coding_eval.jsonl, original problems written for this project (a smoke test, not the
                  paper's 123 Codeforces problems); --data FILE.jsonl with {"problem", "tests"} lines.
  --data FILE     any JSON-lines file of such problems (the CPU demo's model ships its held-out set as
                  MODEL_DIR/test.jsonl).
"""

import functools
import json
import random
from fractions import Fraction
from pathlib import Path

import rewards

REPO_ROOT = Path(__file__).resolve().parent
PROMPTS_DIR = REPO_ROOT / "prompts"
CODING_EVAL_FILE = REPO_ROOT / "data" / "coding_eval.jsonl"
TASKS = ("multiplication", "algebra", "coding")
# Response budgets from the paper's Table 4: arithmetic 1024, algebra 3072, coding 512 tokens.
TASK_MAX_NEW_TOKENS = {"multiplication": 1024, "algebra": 3072, "coding": 512}
# The largest budget accepted (sqlm.py's --max-new-tokens has the same bound): 131,072 tokens, the longest context
# of the models the sampler supports (Llama 3.1), instead of a KV cache too large to allocate.
MAX_NEW_TOKENS = 2**17
TEST_SEED = 1  # the generated test sets; validation during training uses another seed
VALIDATION_SEED = 2


# ============================================================================ prompts


@functools.cache  # read each prompt file once, not once per question
def read_prompt(name: str) -> str:
    """The exact text of prompts/<name>.txt (the release's prompts, whose newlines are part of them)."""
    return (PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8")


def solver_prompt(task: str, question: str) -> str:
    """The solver's user turn: the task's solver prompt with the question filled in (training and evaluation)."""
    if task == "coding":
        return read_prompt("coding_solver").replace("{problem}", question)
    return read_prompt("math_solver").replace("{question}", question)


def solver_system(task: str) -> str | None:
    """The solver's system turn: the release sends one for coding only (its action format); None keeps the chat
    template's default system turn, as the release does for math."""
    return read_prompt("coding_solver_system") if task == "coding" else None


def max_new_tokens(task: str, model, requested: int = 0) -> int:
    """The response budget: as requested, else the model's own default (generation_config.max_new_tokens, which
    a small demo model sets to what its answers need), else the paper's budget for the task."""
    return requested or getattr(model.generation_config, "max_new_tokens", None) or TASK_MAX_NEW_TOKENS[task]


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


def _linear_problem(rng: random.Random) -> tuple[str, str] | None:
    """One OMEGA-style linear-equation word problem and its canonical answer (None = retry: not unique)."""
    name = rng.choice(["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ines", "Jon"])
    kind = rng.randrange(7)
    a, b, c, d = (rng.randint(2, 19) for _ in range(4))
    exact = rewards.canonical_number  # the answer as the scorer compares it
    if kind == 0:  # ax + b = c, answer may be a fraction
        total = rng.randint(b + 1, b + 200)
        return (f"A number is multiplied by {a} and then {b} is added; the result is {total}. What is the number?",
                exact(Fraction(total - b, a)))
    if kind == 1:  # ax + b = cx + d with a != c
        if a == c:
            return None
        return f"Solve for x: {a}x + {b} = {c}x + {d}.", exact(Fraction(d - b, a - c))
    if kind == 2:  # rectangle perimeter, width unknown
        width = rng.randint(1, 40)
        perimeter = 2 * (2 * width + a)
        return (f"The perimeter of a rectangle is {perimeter} meters and its length is {a} meters more than its "
                f"width. What is the width in meters?", str(width))
    if kind == 3:  # tickets: two unknowns with integer solution
        adults, children = rng.randint(1, 60), rng.randint(1, 60)
        price_adult, price_child = a + 5, rng.randint(1, a + 4)
        return (f"A theater sold {adults + children} tickets for a total of "
                f"{adults * price_adult + children * price_child} dollars. Adult tickets cost {price_adult} dollars "
                f"and child tickets cost {price_child} dollars. How many adult and child tickets were sold? Give the "
                f"answer as (adults, children).", f"({adults}, {children})")
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
                f"({exact(x)}, {exact(y)})")
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
    """A JSON-lines file of objects. Any problem is one sentence naming the file and the line (1-based)."""
    try:
        if Path(path).exists() and not Path(path).is_file():  # a named pipe would wait for a writer forever
            raise OSError(0, "not a regular file")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise SystemExit(f"error: cannot read {str(path)!r} ({reason}); pass a JSON-lines text file.") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:  # not JSON, or a number longer than Python reads
            reason = error.msg if isinstance(error, json.JSONDecodeError) else "a number longer than Python reads"
            raise SystemExit(f"error: line {number} of {str(path)!r} is not JSON ({reason}); "
                             "write one JSON object per line.") from None
        if not isinstance(row, dict):
            raise SystemExit(f"error: line {number} of {str(path)!r} is not a JSON object; "
                             "write one JSON object per line.")
        rows.append(row)
    return rows


def problem_error(task: str, problem: dict) -> str | None:
    """What is wrong with one problem of `task`, or None. Checked before any model is loaded."""
    if task == "coding":
        tests = problem.get("tests")
        if not isinstance(problem.get("problem"), str) or not isinstance(tests, list) or not tests:
            return 'it needs "problem" (text) and "tests" (a non-empty list)'
        if not all(isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
                   for t in tests):
            return 'every test needs "input" and "output" strings'
        return None
    if not isinstance(problem.get("question"), str) or "answer" not in problem:
        return 'it needs "question" (text) and "answer"'
    if rewards.canonical_answer(str(problem["answer"])) is None:
        return f"its answer {str(problem['answer'])[:40]!r} is not a number, fraction or tuple of numbers"
    return None


def load_problems(task: str, limit: int | None = None, data: str | None = None, seed: int = TEST_SEED) -> list[dict]:
    """The task's built-in problem set (or the JSON-lines file `data`), first `limit` problems."""
    if data:
        problems = read_jsonl(data)
        for number, problem in enumerate(problems, start=1):
            error = problem_error(task, problem)
            if error:
                raise SystemExit(f"error: problem {number} of {str(data)!r} does not fit --task {task}: {error}.")
        if not problems:
            raise SystemExit(f"error: {str(data)!r} holds no problems; pass a file with one JSON object per line.")
    elif task == "multiplication":
        problems = multiplication_problems(seed=seed)
    elif task == "algebra":
        problems = algebra_problems(seed=seed)
    else:
        problems = read_jsonl(CODING_EVAL_FILE)
    return problems[:limit] if limit else problems


def validation_problems(task: str, limit: int, data: str | None = None) -> list[dict]:
    """Problems for choosing checkpoints during training: the first `limit` of the file `data` if given (the CPU
    demo's model ships validation.jsonl, disjoint from its test.jsonl). Else, math: generated from
    VALIDATION_SEED with every problem of the built-in test set removed, so model selection never sees a test
    problem. Coding has no generator: it reuses the last (up to 8) problems of the built-in coding set, which are
    therefore NOT held out from that set's score (a --data Codeforces file is untouched)."""
    if data:
        return load_problems(task, limit, data)
    if task == "coding":
        return read_jsonl(CODING_EVAL_FILE)[-min(limit, 8):]
    test = {p["question"] for p in load_problems(task)}
    return [p for p in load_problems(task, seed=VALIDATION_SEED) if p["question"] not in test][:limit]
