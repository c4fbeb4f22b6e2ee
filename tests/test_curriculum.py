import ast
import time
from fractions import Fraction

import pytest

import curriculum
import rewards
from curriculum import (audit_step, band_shares, distinct_fraction, majority_histogram, ngrams, novelty,
                        question_complexity, safe_eval, step_ngrams)

# ----------------------------------------------------------------------------- safe_eval: exact values


@pytest.mark.parametrize("text, expected", [
    ("563+247-189", Fraction(621)),
    ("384/(52x2)+7^3-111", Fraction(384, 104) + 343 - 111),
    ("673-145+98x2/7", Fraction(673 - 145) + Fraction(98 * 2, 7)),
    ("1/3+1/6", Fraction(1, 2)),
    ("0.1+0.2", Fraction(3, 10)),
    ("What is 37 * 8?", Fraction(296)),
    ("what is 37*8", Fraction(296)),
    ("Compute: 12 × 3 ÷ 4", Fraction(9)),
    ("Calculate 2^-3.", Fraction(1, 8)),
    ("563+247-189 = ?", Fraction(621)),
    ("-5 * 3", Fraction(-15)),
    ("\u22125 \u00b7 3", Fraction(-15)),  # unicode minus and middle dot
    ("1,234 + 1", Fraction(1235)),
    ("(3) x (4)", Fraction(12)),
    ("007 + 1", Fraction(8)),
    ("-2^2", Fraction(-4)),  # power binds tighter than the sign, as in Python and in maths
    ("2**10", Fraction(1024)),
    ("10/4", Fraction(5, 2)),
])
def test_safe_eval_is_exact(text, expected):
    value = safe_eval(text)
    assert isinstance(value, Fraction)
    assert value == expected


@pytest.mark.parametrize("text", [
    "x",
    "abs(-3)",
    "__import__('os').system('ls')",
    "(1).real",
    "[1, 2][0]",
    "'12'",
    "lambda: 1",
    "1 < 2",
    "True + 1",
    "1e5",
    "1j",
    "0x10 + y",
    "2x",
    "2(3)",
    "1,2",
    "...",
    "5 // 2",
    "5 % 2",
    "1 << 40",
    "",
    "What is the capital of France?",
])
def test_safe_eval_refuses_non_arithmetic(text):
    assert safe_eval(text) is None


@pytest.mark.parametrize("text", ["1/0", "5/(3-3)", "0^-1", "1/(2-2)+3"])
def test_safe_eval_refuses_division_by_zero(text):
    assert safe_eval(text) is None


@pytest.mark.parametrize("text", ["2**10**10", "9**999999", "9^999999", "2^(1/2)", "10000000000000 + 1",
                                  "999999999999*999999999999*999999999999*999999999999"])
def test_safe_eval_refuses_huge_values_quickly(text):
    start = time.perf_counter()
    assert safe_eval(text) is None
    assert time.perf_counter() - start < 0.1


def test_safe_eval_refuses_long_and_deep_input():
    assert safe_eval("1+" * 100 + "1") is None  # 201 characters
    assert safe_eval("-" * 150 + "1") is None  # nests too deeply
    assert safe_eval("(" * 90 + "1" + ")" * 90) == 1  # parentheses add no AST nodes, so no depth
    assert safe_eval("1+" * 60 + "1") == 61


def test_ast_whitelist_holds_without_the_character_filter():
    # The character filter stops letters first; the AST walk must refuse such nodes on its own too.
    for source in ["abs(1)", "a", "(1).real", "[1][0]", "'s'", "1 < 2", "lambda: 1", "True", "1 // 2"]:
        with pytest.raises(ValueError):
            curriculum._evaluate(ast.parse(source, mode="eval"), source)


# ----------------------------------------------------------------------------- format_answer


def test_exact_values_are_canonical_answers():
    """The lens's exact values are written with the reward's own canonicalisation (one function, rewards.py)."""
    assert rewards.canonical_number(safe_eval("384/(52x2)+7^3-111")) == "3064/13"
    assert rewards.canonical_number(safe_eval("3 - 10/2")) == "-2"
    assert rewards.canonical_answer(rewards.canonical_number(safe_eval("1/3+1/6"))) == "1/2"


# ----------------------------------------------------------------------------- question_complexity


def test_question_complexity():
    assert question_complexity("563+247-189") == dict(length=11, digits=9, operators=2, numbers=3)
    assert question_complexity("384/(52x2)+7^3-111") == dict(length=18, digits=11, operators=5, numbers=6)
    assert question_complexity("What is 37 * 8?") == dict(length=15, digits=3, operators=1, numbers=2)
    assert question_complexity("-5 * -3") == dict(length=7, digits=2, operators=1, numbers=2)  # signs aren't operators
    assert question_complexity("2 ** 10") == dict(length=7, digits=3, operators=1, numbers=2)
    assert question_complexity("1,234 + 2.5")["numbers"] == 2
    assert question_complexity("") == dict(length=0, digits=0, operators=0, numbers=0)


# ----------------------------------------------------------------------------- majority_histogram


def test_majority_histogram_counts():
    assert majority_histogram([0, 1, 2, 3, 4, 4, 2, 1], n=4) == {"0": 1, "1": 2, "2": 2, "3": 1, "4": 2}
    assert majority_histogram([], n=2) == {"0": 0, "1": 0, "2": 0}
    with pytest.raises(ValueError):
        majority_histogram([5], n=4)


def test_band_shares_follow_the_proposer_reward():
    assert band_shares([True, False, False, True], [False, True, False, False]) == \
        dict(too_hard=0.25, in_band=0.5, too_easy=0.25)
    assert band_shares([], []) == dict(too_hard=None, in_band=None, too_easy=None)  # nothing to measure
    # Under each gate the in-band share is exactly the share of questions the proposer was paid for.
    for gate in ("release", "paper"):
        groups = (["1", "1", "2", "3"], ["1", "1", "1", "1"], ["1", "2", "3", None], [None] * 4, ["1", "1", "1", "2"])
        paid = [rewards.math_rewards(answers, gate)[1] > 0 for answers in groups]
        unanimous = [rewards.majority_vote(answers)[1] == 4 for answers in groups]
        shares = band_shares(paid, unanimous)
        assert shares["in_band"] == sum(paid) / 5 and shares["too_easy"] == 1 / 5
        assert shares["too_hard"] == pytest.approx(1 - sum(paid) / 5 - 1 / 5)


# ----------------------------------------------------------------------------- novelty


def test_ngrams():
    assert ngrams("563+247-189") == {("563", "+", "247"), ("+", "247", "-"), ("247", "-", "189")}
    assert ngrams("What is 37 * 8?", n=2) == {("what", "is"), ("is", "37"), ("37", "*"), ("*", "8"), ("8", "?")}
    assert ngrams("Hi", n=3) == {("hi",)}
    assert ngrams("   ") == set()


def test_novelty_and_update():
    seen: set = set()
    step_one = ["1+2+3", "4+5+6"]
    assert novelty(step_one, seen) == 1.0
    seen |= step_ngrams(step_one)
    assert novelty(step_one, seen) == 0.0
    # "1+2+3+4" has n-grams (1,+,2) (+,2,+) (2,+,3) seen and (+,3,+) (3,+,4) new.
    assert novelty(["1+2+3+4"], seen) == pytest.approx(2 / 5)
    assert novelty([], seen) is None
    assert novelty([None, ""], seen) is None
    assert seen == step_ngrams(step_one)  # novelty never mutates the caller's history


def test_distinct_fraction():
    assert distinct_fraction(["3 + 4", "3+4", "What is 5*6?", "what is 5 * 6 ?"]) == 0.5
    assert distinct_fraction(["1+1", "2+2", None]) == 1.0
    assert distinct_fraction([]) is None


# ----------------------------------------------------------------------------- audit_step


def test_audit_step():
    truths = ["621", "1/2", "296", None, None]  # None: not plain arithmetic, or divides by zero
    majorities = ["621", "1/3", None, "3", None]
    solver = [
        ["621", "621", "620", None],  # majority right, 2 of 4 answers right
        ["1/3", "1/3", "1/2", "2/6"],  # majority wrong; '2/6' is not canonical, so it does not count
        ["296", "295", "294", "293"],  # no majority: counts as a wrong pseudo-label; 1 answer right
        ["3", "3", "3", "3"],  # no exact value: ignored
        [None, None, None, None],
    ]
    result = audit_step(truths, majorities, solver)
    assert result == dict(n_valid=5, unparseable=2, n_evaluable=3,
                          pseudo_label_accuracy=pytest.approx(1 / 3), solver_accuracy=pytest.approx(4 / 12))


def test_audit_step_with_nothing_to_measure():
    result = audit_step([None], ["2"], [["2"]])
    assert result == dict(n_valid=1, unparseable=1, n_evaluable=0, pseudo_label_accuracy=None, solver_accuracy=None)
    with pytest.raises(ValueError):
        audit_step(["2"], [], [])


def test_step_report_on_a_hand_built_step():
    records = [  # 'truth' is what sqlm.score_questions logs: the exact value of the question, when it has one
        dict(question="2 * 3", majority="6", majority_count=3, answers=["6", "6", "6", "5"], proposer_reward=1.0,
             truth="6"),  # right, in band
        dict(question="10 * 10", majority="99", majority_count=4, answers=["99"] * 4, proposer_reward=0.0,
             truth="100"),  # wrong label, too easy
        dict(question="hello", majority=None, majority_count=0, answers=[None] * 4, proposer_reward=0.0,
             truth=None),  # unparseable, too hard
    ]
    seen = set()
    stop = [0]
    proposals, answers = [[5, 0], [6, 7, 0], [8, 9, 9]], [[1, 0]] * 12  # the third proposal was cut off
    report = curriculum.step_report("multiplication", records, 4, seen, proposals, answers, stop)
    assert report["in_band"] == pytest.approx(1 / 3) and report["too_easy"] == pytest.approx(1 / 3)
    assert report["too_hard"] == pytest.approx(1 / 3)
    assert report["majority_count_0"] == 1 and report["majority_count_3"] == 1 and report["majority_count_4"] == 1
    assert report["pseudo_label_accuracy"] == 0.5  # of the two evaluable questions, one majority is right
    assert report["solver_accuracy"] == 3 / 8
    assert report["unparseable_questions"] == 1
    assert report["majority_agreement"] == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert report["proposer_length"] == pytest.approx(8 / 3) and report["proposer_truncated"] == pytest.approx(1 / 3)
    assert report["solver_length"] == 2 and report["solver_truncated"] == 0 and report["sampled_tokens"] == 8 + 24
    assert report["novelty"] == 1.0 and not seen  # everything is new on the first step; `seen` is not changed
    seen |= step_ngrams([r["question"] for r in records])
    assert curriculum.step_report("multiplication", records, 4, seen, proposals, answers, stop)["novelty"] == 0.0


# ----- a run that cannot learn says so --------------------------------------------------------------------------

SILENT = dict(solver_groups_with_signal=0.0, valid_fraction=1.0, solver_unparseable=1.0, solver_truncated=0.7,
              too_easy=0.0, nothing_to_learn=True)


def test_no_signal_warning_once_a_streak_with_the_measured_reasons():
    history = [dict(SILENT) for _ in range(2)]
    assert curriculum.no_signal_warning(history, 128) is None  # two silent steps: not yet
    history.append(dict(SILENT))
    warning = curriculum.no_signal_warning(history, 128)
    assert warning.startswith("warning: ") and "\n" not in warning
    assert "100% of answers have no <answer>...</answer> tag" in warning
    assert "70% of answers were cut off at 128 tokens" in warning and "--max-new-tokens" in warning
    assert "instruction-tuned" in warning and "the update is skipped" in warning
    history.append(dict(SILENT))
    assert curriculum.no_signal_warning(history, 128) is None  # said once for the streak
    history += [dict(SILENT, solver_groups_with_signal=0.5)] + [dict(SILENT)] * 3
    assert curriculum.no_signal_warning(history, 128) is not None  # a new streak after a step with signal


def test_no_signal_warning_names_no_valid_questions_and_unanimous_votes():
    invalid = dict(solver_groups_with_signal=None, valid_fraction=0.0, proposer_truncated=0.9, optimizer_steps=0)
    warning = curriculum.no_signal_warning([invalid] * 3, 64)
    assert "no proposal was a valid question" in warning and "90% of proposals were cut off at 64" in warning
    unanimous = dict(solver_groups_with_signal=0.0, valid_fraction=1.0, solver_unparseable=0.0,
                     solver_truncated=0.0, too_easy=1.0, optimizer_steps=1)
    warning = curriculum.no_signal_warning([unanimous] * 3, 64)
    assert "every answer agreed on 100% of questions" in warning and "only applies the KL term" in warning
    assert curriculum.no_signal_warning([dict(unanimous, solver_groups_with_signal=0.2)] * 5, 64) is None
