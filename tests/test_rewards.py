from fractions import Fraction

import pytest

import rewards


@pytest.mark.parametrize("text, expected", [
    ("<think>x</think> <answer> 296 </answer>", "296"),
    ("<answer>1,234</answer>", "1234"),
    ("<answer>1234</answer>", "1234"),
    ("<answer>0.5</answer>", "1/2"),
    ("<answer>1/2</answer>", "1/2"),
    ("<answer>2/4</answer>", "1/2"),
    ("<answer>7.0</answer>", "7"),
    ("<answer>-3/6</answer>", "-1/2"),
    ("<answer>-0.25</answer>", "-1/4"),
    ("<answer>$42$</answer>", "42"),
    ("<answer>\\frac{3}{4}</answer>", "3/4"),
    ("<answer>x = 5</answer>", "5"),
    ("<answer>x = 3, y = 1/2</answer>", "(3, 1/2)"),
    ("<answer>(3, 0.5)</answer>", "(3, 1/2)"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last answer counts
    ("<answer>seven</answer>", None),
    ("<answer>3x + 2</answer>", None),
    ("<answer></answer>", None),
    ("<answer>1/0</answer>", None),
    ("<answer>1e999999999</answer>", None),  # no exponents: never builds a giant integer
    ("no tags 296", None),
    ("<answer>296", None),  # unclosed
])
def test_extract_answer(text, expected):
    assert rewards.extract_answer(text) == expected


def test_equal_rationals_give_equal_strings():
    forms = ["0.5", "1/2", "2/4", "0.50", "\\frac{1}{2}"]
    assert {rewards.canonical_answer(f) for f in forms} == {"1/2"}
    assert rewards.parse_number("1,234") == Fraction(1234)
    assert rewards.canonical_answer("x" * 500) is None


def test_answers_as_long_as_the_release_takes():
    # The release's int() takes up to 4300 digits and does not count "_" separators, so 8599 characters pass.
    assert rewards.extract_answer("<answer>" + "_".join("9" * 4300) + "</answer>") == "9" * 4300
    assert rewards.extract_answer("<answer>" + "_".join("9" * 4301) + "</answer>") is None
    assert rewards.extract_answer("<answer>" + "9" * 4301 + "</answer>") is None


def test_majority_vote():
    assert rewards.majority_vote(["3", "5", "3", None]) == ("3", 2)
    assert rewards.majority_vote(["5", "3", "3", "5"]) == ("5", 2)  # tie: the answer seen first
    assert rewards.majority_vote([None, None, "4", None]) == ("4", 1)  # None never wins
    assert rewards.majority_vote([None, None]) == (None, 0)
    assert rewards.majority_vote([]) == (None, 0)


def test_math_rewards_release_gate():
    # 3 of 4 agree: in the band 1 < 3 < 4
    assert rewards.math_rewards(["7", "7", "7", "8"]) == ([1.0, 1.0, 1.0, 0.0], 1.0)
    # unanimous: too easy
    assert rewards.math_rewards(["7", "7", "7", "7"]) == ([1.0] * 4, 0.0)
    # all different: count 1 is not a majority under the release gate
    assert rewards.math_rewards(["1", "2", "3", "4"]) == ([1.0, 0.0, 0.0, 0.0], 0.0)
    # nothing parseable: everyone gets 0
    assert rewards.math_rewards([None] * 4) == ([0.0] * 4, 0.0)
    # a None never matches the majority
    assert rewards.math_rewards(["2", None, "2", "3"]) == ([1.0, 0.0, 1.0, 0.0], 1.0)


def test_math_rewards_paper_gate():
    assert rewards.math_rewards(["1", "2", "3", "4"], gate="paper") == ([1.0, 0.0, 0.0, 0.0], 1.0)
    assert rewards.math_rewards(["7"] * 4, gate="paper")[1] == 0.0
    assert rewards.math_rewards([None] * 4, gate="paper")[1] == 0.0
    with pytest.raises(ValueError):
        rewards.math_rewards(["1"], gate="other")


def test_format_rewards():
    assert rewards.format_rewards(["1", None, "1/2"]) == [1.0, 0.0, 1.0]


def test_parse_question():
    assert rewards.parse_question("multiplication", "  563+247-189 \n") == "563+247-189"
    assert rewards.parse_question("multiplication", "   ") is None
    algebra = "1. ...\n2. ...\n3. ...\nSelected Question: Solve 2x + 3 = 7.\n"
    assert rewards.parse_question("algebra", algebra) == "Solve 2x + 3 = 7."
    assert rewards.parse_question("algebra", "Selected Question: a\n**Selected Question:** **b**") == "b"
    assert rewards.parse_question("algebra", "three problems, none selected") is None
    assert rewards.parse_question("algebra", "Selected Question:   ") is None
    with pytest.raises(ValueError):
        rewards.parse_question("poetry", "x")


CODING_PROPOSAL = """Problem Description:
Sum the numbers.

Input:
A line of integers.

Output:
Their sum.

Test Cases:
1 2 3 ||| 6
1. 5 ||| 5
`-1 1` ||| `0`
not a test line
10 20 |||
4 4 ||| 8
"""


def test_parse_tests_and_coding_question():
    # "10 20 |||" is a test whose expected output is empty (a program that prints nothing), as in the release
    # (ray_trainer.py:124-140 keeps every line holding "|||"): tests/test_release_parity.py.
    assert rewards.parse_tests(CODING_PROPOSAL) == [("1 2 3", "6"), ("5", "5"), ("-1 1", "0"), ("10 20", ""),
                                                    ("4 4", "8")]
    assert rewards.parse_question("coding", CODING_PROPOSAL).startswith("Problem Description:\nSum the numbers.")
    assert "Test Cases" not in rewards.parse_question("coding", CODING_PROPOSAL)
    assert rewards.parse_tests("no marker 1 ||| 2") == []
    assert rewards.parse_question("coding", "Problem Description: x\nTest Cases:\nnothing here") is None
    assert rewards.parse_question("coding", "Problem Description: x") is None


def test_extract_code():
    text = "Idea.\n```python\nprint(1)\n```\nBetter:\n```python\nprint(sum(map(int, input().split())))\n```\n"
    assert rewards.extract_code(text) == "print(sum(map(int, input().split())))"
    # An untagged fence is a program too, as in the release's sandbox (tests/test_release_parity.py).
    assert rewards.extract_code("```\nprint(1)\n```") == "print(1)"
    assert rewards.extract_code("```python\n\n```") is None
    assert rewards.extract_code("no code") is None


def test_extract_code_takes_the_last_python_block():
    # A fence reopened at once starts a new block: the ``` that ends one block may open the next.
    assert rewards.extract_code("```python\nprint(0)\n```python\nprint(2)\n```") == "print(2)"
    # CRLF line ends are line ends: the last block still wins.
    crlf = "```python\r\nprint(1)\r\n```\r\n```python\r\nx = 2\r\nprint(x)\r\n```\r\n"
    assert rewards.extract_code(crlf) == "x = 2\r\nprint(x)"
    # What follows the tag on the fence's line is markup, dropped with it, whether the fence opens its line or not.
    assert rewards.extract_code("```python3.10\nprint(1)\n```") == "print(1)"
    assert rewards.extract_code('```python title="a.py"\nprint(1)\n```') == "print(1)"
    assert rewards.extract_code('Here ```python title="a.py"\nprint(1)\n```') == "print(1)"
    # A ```python inside a sentence after the program opens no block.
    assert rewards.extract_code("```python\nprint(1)\n```\nThe ```python block above reads stdin.\n") == "print(1)"
    assert rewards.extract_code("```python\nprint(1)\n```\nI wrap code in ```python``` fences.") == "print(1)"
    # Without a python block, the first block's tag line goes when it is one word of letters (the release's
    # isalpha() test): "c++" stays, and such a block fails to run, in both.
    assert rewards.extract_code("```text\nprint(1)\n```") == "print(1)"
    assert rewards.extract_code("```c++\nint main() {}\n```") == "c++\nint main() {}"


def test_code_rewards():
    assert rewards.code_rewards([1.0, 0.6, 0.0, 0.2]) == ([1.0, 0.6, 0.0, 0.2], 1.0)
    assert rewards.code_rewards([1.0] * 4) == ([1.0] * 4, 0.0)
    assert rewards.code_rewards([0.0] * 4) == ([0.0] * 4, 0.0)
