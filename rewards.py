"""Label-free rewards for SQLM: pure functions, no torch, no I/O.

Math: the solver's N answers vote; the majority answer stands in for the (unknown) truth.
  solver reward   = 1 if its answer equals the majority answer, else 0
  proposer reward = 1 if the question is neither too easy nor too hard:
                    1 < majority count < N   (the authors' release, default)
                    0 < majority count < N   (the paper's Eq. 2, gate="paper")
Code: the proposer writes unit tests; the solver's program runs against them (sandbox.py).
  solver reward   = fraction of tests its program passes
  proposer reward = 1 if 0 < mean pass fraction < 1

Parity with the authors' release (lili-chen/self-questioning-lm, a verl fork) is pinned case by case in
tests/test_release_parity.py; every deliberate difference there has a key and a reason. File:line references
below are to that repository at commit fe1dd02 (whose code is that of 7844786: it only deletes the README). Its code
scorer is the copy of verl's sandbox_fusion bundled in the release, verl/utils/reward_score/sandbox_fusion/, which
verl/utils/reward_score/__init__.py:65-71 calls; "sandbox_fusion/" below means that copy.
"""

import re
from collections import Counter
from fractions import Fraction

# ----------------------------------------------------------------------------- parsing proposals

TESTS_MARKER = "Test Cases:"
# The release scores a program on the first 10 tests only (sandbox_fusion/__init__.py:83-90, `continuous=True`
# from verl/utils/reward_score/__init__.py:71); the prompt asks for 5.
MAX_TESTS = 10


def parse_question(task: str, proposal: str) -> str | None:
    """Turn the proposer's completion into the question the solver sees; None = invalid question."""
    text = proposal.strip()
    if task == "multiplication":
        # The whole completion is the question ("563+247-189"); the release (ray_trainer.py:1060, parser v1)
        # also passes an empty one on, we call it invalid.
        return text or None
    if task == "algebra":
        # The prompt asks for three problems and then "Selected Question: <question>"; take the text after the
        # last marker, as the release does (ray_trainer.py:1069, parser v2), without its ": " and markdown.
        marker = "Selected Question"
        if marker not in text:
            return None
        question = text.rsplit(marker, 1)[1].strip(" \n:*")  # also drops markdown bold: **Selected Question:**
        return question or None
    if task == "coding":
        # The problem is everything before the first "Test Cases:" (ray_trainer.py:79-80); without tests there
        # is nothing to score against.
        problem, tests = split_coding_proposal(text)
        return problem if problem and tests else None
    raise ValueError(f"unknown task {task!r}")


def split_coding_proposal(text: str) -> tuple[str, list[tuple[str, str]]]:
    """'<problem> Test Cases: <in ||| out lines>' -> (problem, tests). No marker -> (text, [])."""
    if TESTS_MARKER not in text:
        return text.strip(), []
    problem, _ = text.split(TESTS_MARKER, 1)
    return problem.strip(), parse_tests(text)


# "1. ", "2) ", "- " or "* " in front of a test line: list markup, not part of the input.
_LIST_MARKUP = re.compile(r"^\s*(?:\d+[.)]\s+|[-*]\s+)")


def _clean_test_field(text: str) -> str:
    """One side of an `INPUT ||| OUTPUT` line: without surrounding whitespace and `code` backticks, and with a
    written-out `\\n` turned into a newline (the release's prompt asks for a "trailing '\\n'" in OUTPUT_STRING,
    which its sandbox then compares literally and never matches)."""
    text = text.strip().strip("`").strip()
    return text.replace("\\n", "\n").strip()


def parse_tests(text: str) -> list[tuple[str, str]]:
    """The `INPUT ||| OUTPUT` lines between the first 'Test Cases:' marker and the next one (as the release,
    ray_trainer.py:114-130), at most MAX_TESTS of them, as (input, output) pairs. An empty output is a test too
    (the expected output of a program that prints nothing, e.g. an empty list)."""
    if TESTS_MARKER not in text:
        return []
    section = text.split(TESTS_MARKER)[1]
    tests = []
    for line in section.splitlines():
        if "|||" not in line:
            continue
        test_input, expected = line.split("|||", 1)
        # Models like to number their tests ("1. 3 4 ||| 7") or wrap them in backticks; keep the plain values.
        tests.append((_clean_test_field(_LIST_MARKUP.sub("", test_input)), _clean_test_field(expected)))
    return tests[:MAX_TESTS]


# A python block. Its opener is ``` and a python tag (python, python3, python3.10, py; any capitalisation) that ends
# its line, wherever the fence stands ("Here: ```python"); or, on a line the fence opens, the tag and more words
# (```python title="a.py"), which are markup, not code. Openers are searched for directly, so a stray ``` earlier in
# the text cannot pair up with one of them, and a ```python inside a sentence ("the ```python block above") opens
# nothing. The program runs up to the next ```, which is left unconsumed, so a fence reopened at once (```python)
# starts a new block; or to the end of the text (an unclosed last block counts, as in the release). \r?\n: a CRLF
# line end is a line end too.
_PY_TAG = r"(?:python|py)[\d.]*"
_PYTHON_BLOCK = re.compile(rf"""
    (?: ```{_PY_TAG}[ \t]*                  # ```python alone at the end of its line
      | ^[ \t]*```{_PY_TAG}[ \t][^`\r\n]*   # or opening its line, with words after the tag
    ) \r?\n
    (.*?) (?=```|\Z)                         # the program
""", re.DOTALL | re.IGNORECASE | re.MULTILINE | re.VERBOSE)
# The first line of the fallback's block, when it is markup rather than code: a language name ("Python", "text": the
# release's str.isalpha() test), or a python tag and more words (a fence inside a line: "Here ```python title=...").
_PY_TAG_AND_WORDS = re.compile(rf"{_PY_TAG}[ \t].*", re.IGNORECASE)


def extract_code(text: str) -> str | None:
    """The solver's program: the last ```python block; without one, the first fenced block of any kind (its
    language tag line dropped), as the release's sandbox does (sandbox_fusion/__init__.py:46-57).
    None when there is no fence at all (the release scores 0 without running anything, :58-59) or the block is
    blank."""
    blocks = _PYTHON_BLOCK.findall(text)
    if blocks:
        code = blocks[-1]
    elif "```" in text:
        code = text.split("```")[1]  # the text after the first fence, up to the next one
        first_line, newline, rest = code.partition("\n")
        tag = first_line.strip()
        if newline and (tag.isalpha() or _PY_TAG_AND_WORDS.fullmatch(tag)):
            code = rest
    else:
        return None
    code = code.strip("\r\n")
    return code if code.strip() else None


# ----------------------------------------------------------------------------- answers

# One number: an integer (thousands separators allowed), a decimal, or a fraction; no exponents, so a
# hostile "1e999999999" can never make us build an astronomically large integer.
_INT = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)"
_NUMBER = re.compile(rf"^({_INT})(?:\.(\d+))?(?:\s*/\s*({_INT}))?$")
# The release accepts whatever Python's int() accepts, which stops at 4300 digits
# (sys.int_info.default_max_str_digits) but does not count "_" separators: its longest answer is a sign and 4300
# digits with a "_" between every two, 8600 characters. Longer text is refused before any parsing.
_MAX_ANSWER_CHARS = 8600


def parse_number(text: str) -> Fraction | None:
    """'1,234' | '-0.5' | '3/4' | '\\frac{3}{4}' | '7.0' | '1_000' -> exact Fraction; anything else -> None."""
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", text)  # LaTeX \frac{a}{b} -> a/b
    text = text.replace("\u2212", "-").rstrip(".").strip()  # unicode minus, trailing full stop
    text = re.sub(r"(?<=\d)_(?=\d)", "", text)  # Python-style digit grouping, which the release's int() takes
    match = _NUMBER.match(text)
    if not match:
        return None
    whole, decimals, denominator = match.groups()
    try:  # int() refuses more than 4300 digits (ValueError), as it does in the release
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
    except ValueError:
        return None
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
    try:
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
    except ValueError:  # str() of a rational with more than 4300 digits
        return None
    return values[0] if len(values) == 1 else "(" + ", ".join(values) + ")"


# The innermost <answer>...</answer>: its content holds no other "<answer>", so a stray opening tag earlier in the
# text ("I will put it in <answer> tags.") cannot swallow the real answer. Spans lines (the release's pattern,
# verl/utils/reward_score/multiply.py:6, does not, and misses an answer written on its own line).
_ANSWER = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)


def extract_answer(text: str) -> str | None:
    """The canonical number inside the last <answer>...</answer> of a completion; None if missing or not numeric."""
    matches = _ANSWER.findall(text)
    if not matches:
        return None
    return canonical_answer(matches[-1])


# ----------------------------------------------------------------------------- rewards


def majority_vote(answers: list[str | None]) -> tuple[str | None, int]:
    """Most common non-None answer and its count; ties go to the answer seen first (Counter.most_common, as in
    the release's majority.py:90-91). No parseable answer -> (None, 0). Unlike the release, None never takes
    part in the vote: there, "no answer" can outvote (or tie first with) real answers and pay nobody."""
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return None, 0
    answer, count = counts.most_common(1)[0]
    return answer, count


def math_rewards(answers: list[str | None], gate: str = "release",
                 min_majority: int = 0) -> tuple[list[float], float]:
    """Rewards for one question's N solver answers -> (solver reward per answer, proposer reward).

    gate="release": the proposer is paid when 1 < count < N (ray_trainer.py:1194-1196: a question that only
    one sample answers a given way has no real majority). gate="paper": 0 < count < N (the paper's Eq. 2).
    min_majority=K > 0 (sqlm's --proposer-min-majority, off by default) also asks count >= K: the proposer is paid
    only for questions whose vote is still strong enough to teach the solver (count < N still holds)."""
    if gate not in ("release", "paper"):
        raise ValueError(f"gate must be 'release' or 'paper', not {gate!r}")
    majority, count = majority_vote(answers)
    solver_rewards = [1.0 if answer is not None and answer == majority else 0.0 for answer in answers]
    lowest = 1 if gate == "release" else 0
    proposer_reward = 1.0 if lowest < count < len(answers) and count >= min_majority else 0.0
    return solver_rewards, proposer_reward


def format_rewards(answers: list[str | None]) -> list[float]:
    """The paper's format-only baseline for the solver: 1 when the answer parses, whatever its value."""
    return [0.0 if answer is None else 1.0 for answer in answers]


def code_rewards(pass_fractions: list[float]) -> tuple[list[float], float]:
    """Rewards for one problem's N programs -> (solver reward per program, proposer reward).
    The solver earns the fraction of tests it passes; the proposer earns 1 if the problem is neither solved
    by every sample on every test nor failed by all of them (0 < mean < 1, ray_trainer.py:1213-1215)."""
    solver_rewards = [float(fraction) for fraction in pass_fractions]
    mean = sum(solver_rewards) / len(solver_rewards) if solver_rewards else 0.0
    proposer_reward = 1.0 if 0.0 < mean < 1.0 else 0.0
    return solver_rewards, proposer_reward
