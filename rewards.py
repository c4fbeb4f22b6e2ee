"""Label-free rewards for SQLM: pure functions, no torch, no I/O.

Math: the solver's N answers vote; the majority answer stands in for the (unknown) truth.
  solver reward   = 1 if its answer equals the majority answer, else 0
  proposer reward = 1 if the question is neither too easy nor too hard:
                    1 < majority count < N   (the authors' release, default)
                    0 < majority count < N   (the paper's Eq. 2, gate="paper")
Code: the proposer writes unit tests; the solver's program runs against them (sandbox.py).
  solver reward   = fraction of tests its program passes
  proposer reward = 1 if 0 < mean pass fraction < 1
"""

import re
from collections import Counter
from fractions import Fraction

# ----------------------------------------------------------------------------- parsing proposals


def parse_question(task: str, proposal: str) -> str | None:
    """Turn the proposer's completion into the question the solver sees; None = invalid question."""
    text = proposal.strip()
    if task == "multiplication":
        # The whole completion is the question ("563+247-189").
        return text or None
    if task == "algebra":
        # The prompt asks for three problems and then "Selected Question: <question>"; take the last one.
        marker = "Selected Question"
        if marker not in text:
            return None
        question = text.rsplit(marker, 1)[1].strip(" \n:*")  # also drops markdown bold: **Selected Question:**
        return question or None
    if task == "coding":
        # The problem is everything before "Test Cases:"; without tests there is nothing to score against.
        problem, tests = split_coding_proposal(text)
        return problem if problem and tests else None
    raise ValueError(f"unknown task {task!r}")


def split_coding_proposal(text: str) -> tuple[str, list[tuple[str, str]]]:
    """'<problem> Test Cases: <in ||| out lines>' -> (problem, tests). No marker -> (text, [])."""
    marker = "Test Cases:"
    if marker not in text:
        return text.strip(), []
    problem, _ = text.split(marker, 1)
    return problem.strip(), parse_tests(text)


def parse_tests(text: str) -> list[tuple[str, str]]:
    """The `INPUT ||| OUTPUT` lines after the last 'Test Cases:' marker, as (input, output) pairs."""
    marker = "Test Cases:"
    if marker not in text:
        return []
    tests = []
    for line in text.rsplit(marker, 1)[1].splitlines():
        if "|||" not in line:
            continue
        test_input, expected = line.split("|||", 1)
        # Models like to wrap tests in backticks or number them ("1. 3 4 ||| 7"); keep the plain values.
        test_input = re.sub(r"^\s*(?:\d+[.)]\s+|[-*]\s+)?", "", test_input).strip().strip("`").strip()
        expected = expected.strip().strip("`").strip()
        if expected:
            tests.append((test_input, expected))
    return tests


def extract_code(text: str) -> str | None:
    """The last ```python fenced block of a completion (the solver's program), or None."""
    blocks = re.findall(r"```(?:python|py|Python)[ \t]*\n(.*?)```", text, flags=re.DOTALL)
    if not blocks:
        return None
    code = blocks[-1].strip("\n")
    return code if code.strip() else None


# ----------------------------------------------------------------------------- answers

# One number: an integer (thousands separators allowed), a decimal, or a fraction; no exponents, so a
# hostile "1e999999999" can never make us build an astronomically large integer.
_INT = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)"
_NUMBER = re.compile(rf"^({_INT})(?:\.(\d+))?(?:\s*/\s*({_INT}))?$")
_MAX_ANSWER_CHARS = 200


def parse_number(text: str) -> Fraction | None:
    """'1,234' | '-0.5' | '3/4' | '\\frac{3}{4}' | '7.0' -> exact Fraction; anything else -> None."""
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", text)  # LaTeX \frac{a}{b} -> a/b
    text = text.replace("\u2212", "-").rstrip(".").strip()  # unicode minus, trailing full stop
    match = _NUMBER.match(text)
    if not match:
        return None
    whole, decimals, denominator = match.groups()
    value = Fraction(whole.replace(",", ""))
    if decimals:
        sign = -1 if whole.startswith("-") else 1
        value += sign * Fraction(int(decimals), 10 ** len(decimals))
    if denominator:
        if decimals:  # "0.5/2" is not a form anyone writes on purpose
            return None
        denominator_value = Fraction(denominator.replace(",", ""))
        if denominator_value == 0:
            return None
        value /= denominator_value
    return value


def canonical_number(value: Fraction) -> str:
    """Equal rationals -> equal strings: 7 -> '7', 1/2 -> '1/2', -3/4 -> '-3/4'."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def canonical_answer(text: str) -> str | None:
    """Canonicalise an answer: one number ('1,234' -> '1234', '0.5' -> '1/2'), or a tuple of numbers for
    two unknowns ('x = 3, y = 1/2' or '(3, 0.5)' -> '(3, 1/2)'). Non-numeric -> None."""
    text = text.strip()
    if not text or len(text) > _MAX_ANSWER_CHARS:
        return None
    single = parse_number(text)
    if single is not None:
        return canonical_number(single)
    inner = text.strip("()[]{}").strip()
    parts = [part for part in re.split(r",|;|\band\b", inner) if part.strip()]
    if len(parts) < 2:
        # A single "x = 3" is still one number.
        parts = parts or [inner]
    values = []
    for part in parts:
        part = re.sub(r"^\s*[A-Za-z]\w*\s*=", "", part)  # drop a "x =" label
        value = parse_number(part)
        if value is None:
            return None
        values.append(canonical_number(value))
    return values[0] if len(values) == 1 else "(" + ", ".join(values) + ")"


def extract_answer(text: str) -> str | None:
    """The canonical number inside the last <answer>...</answer> of a completion; None if missing or not numeric."""
    matches = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    if not matches:
        return None
    return canonical_answer(matches[-1])


# ----------------------------------------------------------------------------- rewards


def majority_vote(answers: list[str | None]) -> tuple[str | None, int]:
    """Most common non-None answer and its count; ties go to the answer seen first (as Counter.most_common
    does in the authors' release). No parseable answer -> (None, 0)."""
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return None, 0
    answer, count = counts.most_common(1)[0]
    return answer, count


def math_rewards(answers: list[str | None], gate: str = "release") -> tuple[list[float], float]:
    """Rewards for one question's N solver answers -> (solver reward per answer, proposer reward).

    gate="release": the proposer is paid when 1 < count < N (the authors' code: a question that only one
    sample answers a given way has no real majority). gate="paper": 0 < count < N (the paper's Eq. 2)."""
    if gate not in ("release", "paper"):
        raise ValueError(f"gate must be 'release' or 'paper', not {gate!r}")
    majority, count = majority_vote(answers)
    solver_rewards = [1.0 if answer is not None and answer == majority else 0.0 for answer in answers]
    lowest = 1 if gate == "release" else 0
    proposer_reward = 1.0 if lowest < count < len(answers) else 0.0
    return solver_rewards, proposer_reward


def format_rewards(answers: list[str | None]) -> list[float]:
    """The paper's format-only baseline for the solver: 1 when the answer parses, whatever its value."""
    return [0.0 if answer is None else 1.0 for answer in answers]


def code_rewards(pass_fractions: list[float]) -> tuple[list[float], float]:
    """Rewards for one problem's N programs -> (solver reward per program, proposer reward).
    The solver earns the fraction of tests it passes; the proposer earns 1 if the problem is neither solved
    by every sample on every test nor failed by all of them (0 < mean < 1)."""
    solver_rewards = [float(fraction) for fraction in pass_fractions]
    mean = sum(solver_rewards) / len(solver_rewards) if solver_rewards else 0.0
    proposer_reward = 1.0 if 0.0 < mean < 1.0 else 0.0
    return solver_rewards, proposer_reward
