"""A lens on the self-play curriculum: pure functions, no torch, no I/O, no other project file.

Training is label-free, but arithmetic questions can be checked exactly after the fact. This module measures
what the proposer and solver did, for the reader. Its one use in training is deliberate and labelled: the
diagnostic `--solver-reward truth` arm pays the solver with safe_eval's exact value (it uses labels; not SQLM).

  safe_eval                   the exact value of a proposed question ("384/(52x2)+7^3-111" -> 3064/13)
  question_complexity         how big a question is (characters, digits, operators, numbers)
  band_shares                 too easy / in band (what the proposer was paid for) / too hard
  ngrams / novelty / ...      whether the proposer keeps inventing new questions or repeats itself
  audit_step                  how often the majority vote (the pseudo-label) is actually right
  no_signal_warning           a run that cannot learn, said in one line: why (from the metrics) and what to try
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
    """How many questions had majority count k = 0..n (0 = no parseable answer): {'0': .., ..., 'n': ..}."""
    histogram = {str(k): 0 for k in range(n + 1)}
    for count in counts:
        if not 0 <= count <= n:
            raise ValueError(f"majority count {count} is outside 0..{n}")
        histogram[str(count)] += 1
    return histogram


def band_shares(paid: list[bool], solved_by_all: list[bool]) -> dict:
    """Each question's band, as shares of the step's questions (None each when there are none):

      in_band   the proposer was paid for it (math: 1 < k < N under the release gate; code: 0 < mean pass < 1)
      too_easy  not paid, because every sample agreed (math: k = N) or passed every test (code)
      too_hard  not paid otherwise: math, under the release gate no two answers agree (k <= 1), under the paper
                gate no answer parses (k = 0), and with --proposer-min-majority K also 1 < k < K; code, no
                sample passed anything

    Bands come from the proposer's own reward, so they follow whatever gate the run uses."""
    total = len(paid)
    in_band = sum(paid)
    too_easy = sum(all_ and not p for p, all_ in zip(paid, solved_by_all))
    share = (lambda part: part / total) if total else (lambda part: None)
    return dict(too_hard=share(total - in_band - too_easy), in_band=share(in_band), too_easy=share(too_easy))


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


def novelty(questions: list[str | None], seen: set, n: int = 3) -> float | None:
    """Share of this step's distinct n-grams that no earlier step produced (0.0 = all repeats, 1.0 = all
    new). None for a step with no n-grams at all: nothing to measure."""
    grams = step_ngrams(questions, n)
    if not grams:
        return None
    return len(grams - seen) / len(grams)


def distinct_fraction(questions: list[str | None]) -> float | None:
    """Distinct questions / questions within one step, ignoring case and spacing ('3 + 4' == '3+4');
    None entries are skipped; None when there are none. 1.0 = no duplicates."""
    normalised = [tuple(_tokens(question)) for question in questions if question is not None]
    return len(set(normalised)) / len(normalised) if normalised else None


# ----------------------------------------------------------------------------- ground-truth audit


def audit_step(truths: list[str | None], majority_answers: list[str | None],
               solver_answers: list[list[str | None]]) -> dict:
    """Check one arithmetic step against the exact truth, which label-free training never sees.

    One entry per valid question: truths[i] is the canonical exact answer (None where the question is not
    plain arithmetic, too large, or divides by zero); majority_answers[i] and solver_answers[i] are canonical
    answer strings, None where nothing parsed. Returns
      n_valid                 questions
      unparseable             questions without an exact value
      n_evaluable             questions with one
      pseudo_label_accuracy   share of evaluable questions whose majority answer is right (no majority = wrong)
      solver_accuracy         share of all solver answers to evaluable questions that are right (None = wrong)
    The accuracies are None when there is nothing to measure, like every undefined statistic in metrics.jsonl."""
    if not len(truths) == len(majority_answers) == len(solver_answers):
        raise ValueError("truths, majority_answers and solver_answers must have the same length")
    evaluable = [(truth, majority, answers) for truth, majority, answers in zip(truths, majority_answers,
                                                                                solver_answers) if truth is not None]
    labels_right = sum(majority == truth for truth, majority, _ in evaluable)
    answers_right = sum(answer == truth for truth, _, answers in evaluable for answer in answers)
    answers_total = sum(len(answers) for _, _, answers in evaluable)
    return dict(
        n_valid=len(truths),
        unparseable=len(truths) - len(evaluable),
        n_evaluable=len(evaluable),
        pseudo_label_accuracy=labels_right / len(evaluable) if evaluable else None,
        solver_accuracy=answers_right / answers_total if answers_total else None,
    )


def step_report(task: str, records: list[dict], n: int, seen: set, proposals: list[list[int]],
                answers: list[list[int]], stop_ids: list[int]) -> dict:
    """What one training step's proposer and solver did, flat, for metrics.jsonl. `records` are sqlm's
    per-question records (valid questions only, with their rewards and, for multiplication, the exact `truth`);
    `seen` holds the n-grams of earlier steps (the caller adds this step's: `seen |= step_ngrams(questions)`);
    `proposals` and `answers` are the step's sampled token ids, each ending in a stop id if it finished."""
    questions = [record["question"] for record in records]
    unfinished = lambda completions: [not ids or ids[-1] not in stop_ids for ids in completions]  # noqa: E731
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    report = dict(proposer_length=mean([len(ids) for ids in proposals]),
                  solver_length=mean([len(ids) for ids in answers]),
                  proposer_truncated=mean(unfinished(proposals)), solver_truncated=mean(unfinished(answers)),
                  sampled_tokens=sum(len(ids) for ids in proposals + answers),
                  distinct_questions=distinct_fraction(questions), novelty=novelty(questions, seen))
    complexity = [question_complexity(q) for q in questions]
    for key in ("length", "digits", "operators"):
        report[f"question_{key}"] = sum(c[key] for c in complexity) / len(complexity) if complexity else None
    paid = [record["proposer_reward"] > 0 for record in records]
    if task == "coding":
        report.update(band_shares(paid, [min(r["pass_fractions"], default=0.0) == 1.0 for r in records]))
        return report
    report.update(band_shares(paid, [record["majority_count"] == n for record in records]))
    # How strongly the N answers agree: the mean share of the majority answer (1.0 = unanimous).
    report["majority_agreement"] = mean([record["majority_count"] / n for record in records]) if records else None
    # Answers with no parseable <answer> tag: they earn 0 and never count in the vote.
    report["solver_unparseable"] = mean([answer is None for record in records for answer in record["answers"]])
    histogram = majority_histogram([record["majority_count"] for record in records], n)
    report.update({f"majority_count_{k}": count for k, count in histogram.items()})
    if task == "multiplication":
        audit = audit_step([r["truth"] for r in records], [r["majority"] for r in records],
                           [r["answers"] for r in records])
        report.update(pseudo_label_accuracy=audit["pseudo_label_accuracy"], solver_accuracy=audit["solver_accuracy"],
                      unparseable_questions=audit["unparseable"])
    return report


# ----------------------------------------------------------------------------- a run that cannot learn

NO_SIGNAL_STEPS = 3  # this many steps in a row without a solver group with signal -> the warning


def no_signal_warning(history: list[dict], budget: int) -> str | None:
    """One line beginning 'warning:' at the step where the run's last NO_SIGNAL_STEPS steps (metrics.jsonl rows,
    oldest first) have all gone without a solver group with a learning signal, else None; so it is said once a
    streak. A group has signal when its rewards differ; without any, every advantage is 0 and nothing is learned.
    The line says why, from what was measured in the latest step, and what to try. `budget`: the run's response
    budget in tokens."""
    streak = 0  # steps in a row, up to the latest, without a solver group with signal
    for row in reversed(history):
        if row.get("solver_groups_with_signal"):
            break
        streak += 1
    if streak != NO_SIGNAL_STEPS:
        return None
    last, percent = history[-1], lambda value: f"{100 * (value or 0):.0f}%"  # noqa: E731
    why, fix = [], []
    if not last.get("valid_fraction"):
        why.append("no proposal was a valid question")
        if (last.get("proposer_truncated") or 0) > 0.5:
            why.append(f"{percent(last['proposer_truncated'])} of proposals were cut off at {budget} tokens")
        fix.append("an instruction-tuned model that can follow the proposer prompt (prompts/), or a larger "
                   "--max-new-tokens")
    else:
        if (last.get("solver_unparseable") or 0) > 0.5:
            why.append(f"{percent(last['solver_unparseable'])} of answers have no <answer>...</answer> tag")
            fix.append("a stronger or instruction-tuned model that writes the answer format")
        if (last.get("solver_truncated") or 0) > 0.3:
            why.append(f"{percent(last['solver_truncated'])} of answers were cut off at {budget} tokens")
            fix.append("a larger --max-new-tokens")
        if (last.get("too_easy") or 0) > 0.9:
            why.append(f"every answer agreed on {percent(last['too_easy'])} of questions (nothing to choose between)")
            fix.append("a harder topic prompt or a higher --temperature")
        if not why:
            why.append("every question's answers earned the same reward")
            fix.append("a stronger model, a larger --max-new-tokens, or the prompts")
    if last.get("nothing_to_learn"):
        learns = "the update is skipped: it has nothing to learn"
    elif last.get("proposer_updated") and last.get("proposer_groups_with_signal"):
        learns = "only the proposer learns"
    else:
        learns = "the update only applies the KL term"
    return (f"warning: no solver group has had a learning signal for {NO_SIGNAL_STEPS} steps (every advantage is 0, "
            f"{learns}): {'; '.join(why)}. Try {', or '.join(fix)}.")
