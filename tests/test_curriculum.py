import ast
import time
from fractions import Fraction

import pytest

import curriculum
from curriculum import (audit_step, distinct_fraction, format_answer, majority_histogram, ngrams, novelty,
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


def test_format_answer():
    assert format_answer(Fraction(296)) == "296"
    assert format_answer(Fraction(6, 8)) == "3/4"
    assert format_answer(Fraction(1, -2)) == "-1/2"
    assert format_answer(Fraction(-10, 5)) == "-2"
    assert format_answer(Fraction(0)) == "0"
    assert format_answer(safe_eval("384/(52x2)+7^3-111")) == "3064/13"


def test_format_answer_matches_the_reward_canonicalisation():
    import rewards

    for value in [Fraction(296), Fraction(3, 4), Fraction(-1, 2), Fraction(0), Fraction(-7)]:
        assert format_answer(value) == rewards.canonical_number(value)
        assert rewards.canonical_answer(format_answer(value)) == format_answer(value)


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


def test_majority_histogram_counts_and_bands():
    result = majority_histogram([0, 1, 2, 3, 4, 4, 2, 1], n=4)
    assert {k: result[k] for k in "01234"} == {"0": 1, "1": 2, "2": 2, "3": 1, "4": 2}
    assert result["too_hard"] == 3 / 8  # k = 0, 1, 1
    assert result["in_band"] == 3 / 8  # k = 2, 3, 2
    assert result["too_easy"] == 2 / 8  # k = 4, 4


def test_majority_histogram_edges():
    empty = majority_histogram([], n=4)
    assert empty["0"] == 0 and empty["too_hard"] == empty["in_band"] == empty["too_easy"] == 0.0
    single = majority_histogram([1, 0], n=1)  # one answer per question: k = 1 is unanimous
    assert (single["too_hard"], single["in_band"], single["too_easy"]) == (0.5, 0.0, 0.5)
    with pytest.raises(ValueError):
        majority_histogram([5], n=4)


def test_majority_histogram_band_matches_proposer_reward():
    import rewards

    for answers in (["1", "1", "2", "3"], ["1", "1", "1", "1"], ["1", "2", "3", None], [None] * 4, ["1", "1", "1", "2"]):
        _, count = rewards.majority_vote(answers)
        _, proposer_reward = rewards.math_rewards(answers, gate="release")
        assert majority_histogram([count], n=4)["in_band"] == proposer_reward


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
    assert novelty([], seen) == 0.0
    assert novelty([None, ""], seen) == 0.0
    assert seen == step_ngrams(step_one)  # novelty never mutates the caller's history


def test_distinct_fraction():
    assert distinct_fraction(["3 + 4", "3+4", "What is 5*6?", "what is 5 * 6 ?"]) == 0.5
    assert distinct_fraction(["1+1", "2+2", None]) == 1.0
    assert distinct_fraction([]) == 0.0


# ----------------------------------------------------------------------------- audit_step


def test_audit_step():
    questions = ["563+247-189", "1/3+1/6", "What is 37 * 8?", "abs(-3)", None, "7/0"]
    majorities = ["621", "1/3", None, "3", "5", None]
    solver = [
        ["621", "621", "620", None],  # majority right, 2 of 4 answers right
        ["1/3", "1/3", "1/2", "2/6"],  # majority wrong; '2/6' is not canonical, so it does not count
        ["296", "295", "294", "293"],  # no majority: counts as a wrong pseudo-label; 1 answer right
        ["3", "3", "3", "3"],  # not arithmetic: unparseable, ignored
        ["5", "5", "5", "5"],  # invalid question: skipped
        [None, None, None, None],  # divides by zero: unparseable
    ]
    result = audit_step(questions, majorities, solver)
    assert result == dict(n_valid=5, unparseable=2, n_evaluable=3,
                          pseudo_label_accuracy=pytest.approx(1 / 3), solver_accuracy=pytest.approx(4 / 12))


def test_audit_step_with_nothing_to_measure():
    result = audit_step([None, "x+1"], [None, "2"], [[], ["2"]])
    assert result == dict(n_valid=1, unparseable=1, n_evaluable=0, pseudo_label_accuracy=None, solver_accuracy=None)
    with pytest.raises(ValueError):
        audit_step(["1+1"], [], [])


def test_step_report_on_a_hand_built_step():
    records = [
        dict(question="2 * 3", majority="6", majority_count=3, answers=["6", "6", "6", "5"]),  # right, in band
        dict(question="10 * 10", majority="99", majority_count=4, answers=["99"] * 4),  # wrong label, too easy
        dict(question="hello", majority=None, majority_count=0, answers=[None] * 4),  # unparseable, too hard
    ]
    seen = set()
    report = curriculum.step_report("multiplication", records, 4, seen)
    assert report["in_band"] == pytest.approx(1 / 3) and report["too_easy"] == pytest.approx(1 / 3)
    assert report["too_hard"] == pytest.approx(1 / 3)
    assert report["majority_count_0"] == 1 and report["majority_count_3"] == 1 and report["majority_count_4"] == 1
    assert report["pseudo_label_accuracy"] == 0.5  # of the two evaluable questions, one majority is right
    assert report["solver_accuracy"] == 3 / 8
    assert report["unparseable_questions"] == 1
    assert [r["truth"] for r in records] == ["6", "100", None]
    assert report["novelty"] == 1.0 and seen  # everything is new on the first step, and remembered
    assert curriculum.step_report("multiplication", records, 4, seen)["novelty"] == 0.0
