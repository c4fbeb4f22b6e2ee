"""A lens on the self-play curriculum: pure functions, no torch, no I/O.

Training is label-free, but arithmetic questions can be checked exactly after the fact. This module is for
the reader, not the trainer: it never feeds a reward, it only measures what the proposer and solver did.

  safe_eval / format_answer   the exact value of a proposed question ("384/(52x2)+7^3-111" -> '3064/13')
  question_complexity         how big a question is (characters, digits, operators, numbers)
  majority_histogram          how strongly the N solver answers agree, in the proposer's reward bands
  ngrams / novelty / ...      whether the proposer keeps inventing new questions or repeats itself
  audit_step                  how often the majority vote (the pseudo-label) is actually right
"""

import ast
import re
from fractions import Fraction

# ----------------------------------------------------------------------------- exact evaluation

_MAX_INPUT_CHARS = 200
_MAX_LITERAL = 10**12  # largest number a question may write down
_MAX_PART = 10**36  # largest numerator or denominator of any intermediate value
_MAX_EXPONENT = 10  # |exponent| for ^ / **; with the bound above a power has at most ~1,200 bits
_MAX_NODES = 256
_MAX_DEPTH = 100  # "1+2+3+..." nests to the left, one level per term

# After preprocessing, an expression is made of these characters only. Letters never get through, so
# names, calls, attributes, strings, lambdas, scientific notation (1e9) and complex numbers (1j) are all
# refused before Python parses anything; the AST whitelist below is the second, independent line of defence.
_ALLOWED_CHARS = re.compile(r"^[0-9+\-*/(). ]+$")

# "What is 37 * 8?", "Compute: 3+4", "Calculate the value of 2^5 =" -> keep only the expression.
_LEADING_PHRASE = re.compile(
    r"^\s*(?:what\s+is|what's|compute|calculate|evaluate|find|simplify|solve)\b(?:\s+the\s+value\s+of)?\s*:?\s*",
    flags=re.IGNORECASE,
)
_TRAILING_JUNK = re.compile(r"[\s?=.!]+$")  # "563+247-189 = ?" -> "563+247-189"
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d,])")  # 1,234,567 (not "1,2" or "12,34")
_TIMES_LETTER = re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])")  # "98x2", "(3) x (4)"; a bare "2x" stays a letter
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")  # Python refuses "007"; "0.5" and "100" are untouched

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _expression_text(text: str) -> str:
    """The bare Python-syntax expression inside a question; may still be junk (safe_eval judges it)."""
    text = re.sub(r"\s+", " ", text).strip()
    text = _LEADING_PHRASE.sub("", text)
    text = _TRAILING_JUNK.sub("", text)
    text = text.replace("\u2212", "-")  # unicode minus
    text = text.replace("\u00d7", "*").replace("\u00b7", "*").replace("\u2217", "*")  # × · ∗
    text = text.replace("\u00f7", "/")  # ÷
    text = _THOUSANDS.sub(lambda match: match.group().replace(",", ""), text)
    text = _TIMES_LETTER.sub("*", text)
    text = text.replace("^", "**")  # the proposer means power, not Python's xor
    text = _LEADING_ZEROS.sub("", text)
    return text.strip()


def _bounded(value: Fraction) -> Fraction:
    """Refuse (via OverflowError) a value too large to be a sensible answer; keeps every step cheap."""
    if abs(value.numerator) > _MAX_PART or value.denominator > _MAX_PART:
        raise OverflowError("intermediate value too large")
    return value


def _evaluate(node: ast.AST, source: str, depth: int = 0) -> Fraction:
    """Exact value of a whitelisted AST node. Anything off the whitelist raises ValueError."""
    if depth > _MAX_DEPTH:
        raise ValueError("expression nested too deeply")
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, source, depth + 1)
    if isinstance(node, ast.Constant):
        # bool is a subclass of int, so test the exact type: True, None, "text", ... are refused.
        if type(node.value) not in (int, float):
            raise ValueError(f"constant {node.value!r} is not a number")
        # Read the digits as written ("0.1" -> 1/10), never the rounded binary float.
        value = Fraction(ast.get_source_segment(source, node) or str(node.value))
        if abs(value) > _MAX_LITERAL or value.denominator > _MAX_LITERAL:
            raise OverflowError("number too large")
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, source, depth + 1)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base = _evaluate(node.left, source, depth + 1)
        exponent = _evaluate(node.right, source, depth + 1)
        # Check the exponent *before* computing: 9**999999 must be refused, not attempted.
        if exponent.denominator != 1 or abs(exponent) > _MAX_EXPONENT:
            raise OverflowError("exponent must be an integer of size at most 10")
        return _bounded(base ** int(exponent))  # 0 ** -1 raises ZeroDivisionError
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _evaluate(node.left, source, depth + 1)
        right = _evaluate(node.right, source, depth + 1)
        return _bounded(_BINARY[type(node.op)](left, right))  # x / 0 raises ZeroDivisionError
    raise ValueError(f"{type(node).__name__} is not arithmetic")


def safe_eval(text: str) -> Fraction | None:
    """Exact value of an arithmetic question ('What is 37 * 8?' -> 296, '0.1+0.2' -> 3/10); None if it is
    not plain arithmetic (+ - * / ^, parentheses, numbers), too large, or divides by zero. Never eval()."""
    if not isinstance(text, str) or len(text) > _MAX_INPUT_CHARS:
        return None
    source = _expression_text(text)
    if not source or not _ALLOWED_CHARS.match(source):
        return None
    try:
        tree = ast.parse(source, mode="eval")
        if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
            return None
        return _evaluate(tree, source)
    except (SyntaxError, ValueError, OverflowError, ZeroDivisionError, RecursionError, MemoryError):
        return None


def format_answer(value: Fraction) -> str:
    """Canonical answer text, identical to rewards.canonical_number: 296 -> '296', -1/2 -> '-1/2'."""
    value = Fraction(value)  # Fraction keeps itself reduced, with the sign on the numerator
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


# ----------------------------------------------------------------------------- question size

_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")  # 1,234 and 2.5 are one number each
# A binary operator follows an operand (a digit or ")"); the "-" in "2 * -3" is a sign, not an operator.
_OPERATOR = re.compile(r"(?<=[\d)])\s*(?:\*\*|[-+*/^xX\u00d7\u00f7\u00b7\u2212\u2217])(?=\s*[\d(+\-\u2212])")


def question_complexity(text: str) -> dict:
    """Size of a question: {'length': characters, 'digits': digit characters, 'operators': binary
    arithmetic operators ('**' counts once), 'numbers': numbers written}."""
    return dict(
        length=len(text),
        digits=sum(character in "0123456789" for character in text),
        operators=len(_OPERATOR.findall(text)),
        numbers=len(_NUMBER.findall(text)),
    )


# ----------------------------------------------------------------------------- agreement bands


def majority_histogram(counts: list[int], n: int) -> dict:
    """How many questions had majority count k = 0..n (0 = no parseable answer), plus the share in each
    band of the proposer reward (rewards.math_rewards, gate="release", pays 1 < k < N):

      too_hard  k <= 1      no two answers agree: no real majority, the proposer is not paid
      in_band   1 < k < n   a majority but not unanimity: the questions the proposer is paid for
      too_easy  k == n      all N answers agree: the proposer is not paid

    Under gate="paper" (0 < k < N) the k = 1 questions are paid too; they are still counted as too_hard
    here. The bands never overlap: with n = 1, k = 1 is too_easy. Fractions are 0.0 for an empty list."""
    histogram = {str(k): 0 for k in range(n + 1)}
    for count in counts:
        if not 0 <= count <= n:
            raise ValueError(f"majority count {count} is outside 0..{n}")
        histogram[str(count)] += 1
    total = len(counts)
    too_easy = sum(count == n for count in counts)
    too_hard = sum(count <= 1 and count != n for count in counts)
    in_band = total - too_easy - too_hard
    share = (lambda part: part / total) if total else (lambda part: 0.0)
    return dict(histogram, too_hard=share(too_hard), in_band=share(in_band), too_easy=share(too_easy))


# ----------------------------------------------------------------------------- novelty

# Words and numbers are tokens, and so is each symbol: "563+247" -> ['563', '+', '247']. Keeping the
# operators lets arithmetic questions, which have hardly any words, still have a shape.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def ngrams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """The set of lower-cased token n-grams of one question. A question shorter than n tokens yields its
    whole token tuple (so 'Hi' is still something), an empty one yields nothing."""
    tokens = _tokens(text)
    if not tokens:
        return set()
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def step_ngrams(questions: list[str | None], n: int = 3) -> set[tuple[str, ...]]:
    """All n-grams of one step's questions (None = invalid question, skipped). The caller grows its history
    with `seen |= step_ngrams(questions)` after measuring novelty."""
    grams: set[tuple[str, ...]] = set()
    for question in questions:
        if question is not None:
            grams |= ngrams(question, n)
    return grams


def novelty(questions: list[str | None], seen: set, n: int = 3) -> float:
    """Share of this step's distinct n-grams that no earlier step produced (0.0 = all repeats, 1.0 = all
    new). A step with no n-grams at all scores 0.0: proposing nothing is not novelty."""
    grams = step_ngrams(questions, n)
    if not grams:
        return 0.0
    return len(grams - seen) / len(grams)


def distinct_fraction(questions: list[str | None]) -> float:
    """Distinct questions / questions within one step, ignoring case and spacing ('3 + 4' == '3+4');
    None entries are skipped; 0.0 when there are none. 1.0 = no duplicates."""
    normalised = [tuple(_tokens(question)) for question in questions if question is not None]
    return len(set(normalised)) / len(normalised) if normalised else 0.0


# ----------------------------------------------------------------------------- ground-truth audit


def audit_step(
    questions: list[str | None],
    majority_answers: list[str | None],
    solver_answers: list[list[str | None]],
) -> dict:
    """Check one arithmetic step against the exact truth, which training never sees.

    questions[i] is None for an invalid proposal (skipped); majority_answers[i] and solver_answers[i] are
    canonical strings (format_answer / rewards.canonical_answer), None where nothing parsed. Returns
      n_valid                 questions that were not None
      unparseable             valid questions safe_eval cannot evaluate (not plain arithmetic, too large, x/0)
      n_evaluable             questions with an exact value
      pseudo_label_accuracy   share of evaluable questions whose majority answer is right (no majority = wrong)
      solver_accuracy         share of all solver answers to evaluable questions that are right (None = wrong)
    The accuracies are None when there is nothing to measure, like sqlm's other undefined statistics."""
    if not len(questions) == len(majority_answers) == len(solver_answers):
        raise ValueError("questions, majority_answers and solver_answers must have the same length")
    n_valid = unparseable = labels_right = answers_right = answers_total = 0
    for question, majority, answers in zip(questions, majority_answers, solver_answers):
        if question is None:
            continue
        n_valid += 1
        value = safe_eval(question)
        if value is None:
            unparseable += 1
            continue
        truth = format_answer(value)
        labels_right += majority == truth
        answers_right += sum(answer == truth for answer in answers)
        answers_total += len(answers)
    n_evaluable = n_valid - unparseable
    return dict(
        n_valid=n_valid,
        unparseable=unparseable,
        n_evaluable=n_evaluable,
        pseudo_label_accuracy=labels_right / n_evaluable if n_evaluable else None,
        solver_accuracy=answers_right / answers_total if answers_total else None,
    )


def step_report(task: str, records: list[dict], n: int, seen: set) -> dict:
    """All curriculum metrics of one training step, flat, for metrics.jsonl. `records` are sqlm's per-question
    records (valid questions only); `seen` holds the n-grams of earlier steps and is updated here.
    For math it also adds each record's `truth` (multiplication only) for samples.jsonl."""
    questions = [record["question"] for record in records]
    report = dict(distinct_questions=distinct_fraction(questions), novelty=novelty(questions, seen))
    seen |= step_ngrams(questions)
    complexity = [question_complexity(q) for q in questions]
    for key in ("length", "digits", "operators"):
        report[f"question_{key}"] = sum(c[key] for c in complexity) / len(complexity) if complexity else None
    if task == "coding":
        return report
    histogram = majority_histogram([record["majority_count"] for record in records], n)
    report.update({f"majority_count_{k}": v for k, v in histogram.items() if k.isdigit()})
    report.update(too_hard=histogram["too_hard"], in_band=histogram["in_band"], too_easy=histogram["too_easy"])
    if task == "multiplication":
        for record in records:  # the lens only: training never reads `truth`
            value = safe_eval(record["question"])
            record["truth"] = format_answer(value) if value is not None else None
        audit = audit_step(questions, [r["majority"] for r in records], [r["answers"] for r in records])
        report.update(pseudo_label_accuracy=audit["pseudo_label_accuracy"], solver_accuracy=audit["solver_accuracy"],
                      unparseable_questions=audit["unparseable"])
    return report
