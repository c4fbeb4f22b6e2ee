"""Differential fixture: rewards.py (and sandbox's output comparison) against the authors' release.

The release is lili-chen/self-questioning-lm (a fork of verl) at commit fe1dd02ecf4ab4f3c398acd186c6caaa970cbd58;
its only change from the first commit, 7844786, is a deleted README, so the code and its line numbers are those of
7844786. Every file cited is the release's own. Its coding reward is its bundled copy of verl's sandbox_fusion
scorer (not upstream verl's, whose lines differ): coding_selfplay.yaml:3-7 sets a sandbox URL and the "prime"
reward manager, reward.py:116-129 passes that URL on, and the solver's data source "codecontests"
(ray_trainer.py:1137) reaches the bundled scorer with continuous=True (reward_score/__init__.py:65-71). Short names
used in the comments:
    multiply.py              = verl/utils/reward_score/multiply.py
    majority.py              = verl/workers/reward_manager/majority.py
    ray_trainer.py           = verl/trainer/ppo/ray_trainer.py
    reward.py                = verl/trainer/ppo/reward.py
    reward_score/__init__.py = verl/utils/reward_score/__init__.py
    dp_actor.py              = verl/workers/actor/dp_actor.py
    core_algos.py            = verl/trainer/ppo/core_algos.py
    main_ppo.py              = verl/trainer/main_ppo.py
    ppo_trainer.yaml         = verl/trainer/config/ppo_trainer.yaml
    coding_selfplay.yaml     = verl/trainer/config/exps/coding_selfplay.yaml
    sf/__init__.py           = verl/utils/reward_score/sandbox_fusion/__init__.py   (README: sandbox_fusion/)
    sf/utils.py              = verl/utils/reward_score/sandbox_fusion/utils.py
README's table of differences names the same files the same way. Line numbers were counted at that commit; every
comment also names the expression it pins. A `# release:` comment covers the cases below it, up to the next comment.

Each case states, as data, what the release returns for the input and what sqlm returns. The release values were
derived by reading the cited lines, then checked by calling the release's own pure functions (multiply.py's
extract_solution, ray_trainer.py's extract_unit_tests and extract_problem_description, sf/__init__.py's
compute_score and sf/utils.py's _process_single_case with the sandbox call stubbed) on every input, outside this
repository: none of the release's code is copied or run here. A case without `differs` asserts sqlm == release. A
case with `differs="<key>"` is a deliberate difference: the test asserts sqlm's documented behaviour, that the two
really differ, and that the key is explained in DIFFERENCES (which README's table "Where we differ from the release,
and why" must list).

Representation of the release's result, per function:
    extract_answer    the string multiply.extract_solution returns (the stripped tag content, kept only if int()
                      parses it), or None
    majority_vote     (Counter(answers).most_common(1)[0][0], its count): None takes part in the vote
    math_rewards      (solver rewards, proposer reward) from majority.py:92 and ray_trainer.py:1194-1196
    parse_question    the question text the release puts after the solver instruction (for coding: the problem
                      description); `release_mask` is the loss mask it builds (never applied: dp_actor.py:372-375 reads
                      it only for multi-turn rollouts, off in these runs)
    parse_tests       the (input, output) pairs of extract_unit_tests that are scored: the first 10
    extract_code      the program text sf/__init__.py hands to the sandbox, line ends around it removed; None when
                      it hands none (no fence: it scores 0 without running anything)
    passes            whether sf/utils.py counts the test as passed (clean exit and equal stdout)
    pass_fraction     the continuous score of sf/__init__.py for the proposal's tests
"""

import dataclasses
from pathlib import Path

import pytest

import rewards
import sandbox

# Every deliberate difference: key -> (release, sqlm, why). README's table carries the same rows.
DIFFERENCES = {
    "exact_rationals": "answers are canonical exact rationals ('007' = '7', '+7' = '7', '1,234', '0.5' = '1/2', "
                       "tuples); the release keeps any int()-parseable string and compares strings",
    "multiline_answer": "an <answer> whose content spans lines counts; the release's pattern has no DOTALL, so it "
                        "misses it (and falls back to an earlier single-line answer)",
    "nested_answer_tag": "the innermost <answer>...</answer> is taken, so a stray opening tag on the same line "
                         "cannot swallow the real answer; the release gets '<answer>42' and no answer",
    "none_never_wins": "a sample with no parseable answer does not vote; in the release None is counted, can win "
                       "or tie first, and then pays nobody",
    "paper_gate": "--gate paper offers the paper's Eq. 2 (0 < k < N); the release implements only 1 < k < N",
    "question_text_trim": "the question is stripped of surrounding whitespace and, for algebra, of the ': ' and "
                          "markdown after 'Selected Question'; the release passes the raw text on",
    "empty_proposal": "an empty or whitespace-only arithmetic proposal is invalid; the release asks the solver an "
                      "empty question and trains on it",
    "empty_selected_question": "'Selected Question:' with nothing after it is invalid; the release asks ':'",
    "invalid_masked": "an invalid proposal (no marker) is not solved and is masked out of both losses; the release "
                      "builds a 0 mask but never applies it (multi_turn is off), so it solves and trains on it",
    "coding_validity": "a coding proposal with no test line, or with an empty problem, is invalid; the release "
                       "keeps both (mask 1): without tests every program scores 0, and with an empty problem the "
                       "solver is asked the bare instruction and scored on the tests as usual",
    "test_line_cleanup": "list markup ('1. ', '- ') and backticks around a test's input/output are removed; the "
                         "release feeds them to the program, so no program can pass that test",
    "literal_newline": "a written-out '\\n' in a test (which the release's prompt asks for) is a newline; the "
                       "release compares the two characters literally, so no program can pass that test",
    "fence_tag_line": "the whole tag line of a python block is dropped (```python3, ```python3.10, ```python "
                      "title=\"a.py\"); the release runs the rest of that line after '```python' as code: a number "
                      "or title=\"a.py\" is a valid statement, a word such as showLineNumbers fails the program",
    "fence_in_prose": "a ```python inside a sentence after the program ('the ```python block above') opens no "
                      "block, so the program still runs; the release takes the text after the last '```python' "
                      "anywhere (the rest of that sentence, or nothing), and the program fails",
    "python_tag_case": "```Python and ```py blocks are python blocks (the last one wins); the release only knows "
                       "lowercase ```python and otherwise takes the first fenced block",
    "blank_program": "a blank fenced block is no program; the release runs the empty program, which passes only "
                     "tests whose expected output is empty",
    "output_whitespace": "output comparison ignores trailing spaces on each line and CRLF (sandbox.normalize_output); "
                         "the release strips only trailing newlines of the whole output",
}

PROPOSAL = """Problem Description:
Sum the numbers.

Input:
A line of integers.

Output:
Their sum.

Test Cases:
1 2 3 ||| 6
4 4 ||| 8
"""
TWELVE_TESTS = "P\nTest Cases:\n" + "".join(f"{i} ||| {i}\n" for i in range(12))


def _case(fn, args, release, sqlm, differs=None, **extra):
    return dict(fn=fn, args=args, release=release, sqlm=sqlm, differs=differs, **extra)


CASES = [
    # ------------------------------------------------------------------ answer extraction
    # release: multiply.py:6-10 (re.finditer r'<answer>(.*?)</answer>', last match, .strip()), :15 int() check
    _case("extract_answer", ("<think>x</think> <answer> 296 </answer>",), "296", "296"),
    # release: multiply.py:10 (matches[-1]: the last answer counts)
    _case("extract_answer", ("<answer>1</answer> then <answer>2</answer>",), "2", "2"),
    # release: multiply.py:6 ('.' stops at a newline: a multi-line answer is not matched at all)
    _case("extract_answer", ("<answer>\n296\n</answer>",), None, "296", "multiline_answer"),
    # release: multiply.py:6,10 (the multi-line last answer is invisible, the earlier one-line answer wins)
    _case("extract_answer", ("<answer>1</answer>\n<answer>\n2\n</answer>",), "1", "2", "multiline_answer"),
    # release: multiply.py:6 (a stray '<answer>' with no closing tag on its line never matches; the real one does)
    # -- the input on which sqlm used to return None: fixed
    _case("extract_answer", ("I will put it in <answer> tags.\nSo:\n<answer>42</answer>",), "42", "42"),
    # release: multiply.py:6,10 (the echoed format example matches first, the real answer last)
    _case("extract_answer", ("i.e., <answer> RESULT_NUMBER </answer>\n<answer>42</answer>",), "42", "42"),
    # release: multiply.py:6,15 (lazy match from the first '<answer>': ' tags: <answer>42', int() fails)
    _case("extract_answer", ("in <answer> tags: <answer>42</answer>",), None, "42", "nested_answer_tag"),
    # release: multiply.py:6,15 (group is '<answer>5')
    _case("extract_answer", ("<answer><answer>5</answer></answer>",), None, "5", "nested_answer_tag"),
    # release: multiply.py:6 (the first '</answer>' closes)
    _case("extract_answer", ("<answer>5</answer></answer>",), "5", "5"),
    # release: multiply.py:9-12 (no closed tag: None)
    _case("extract_answer", ("<answer>296",), None, None),
    # release: multiply.py:10 (only the closed pair counts)
    _case("extract_answer", ("<answer>1</answer> <answer>296",), "1", "1"),
    # release: multiply.py:6 (tags are case-sensitive)
    _case("extract_answer", ("<ANSWER>296</ANSWER>",), None, None),
    # release: multiply.py:9-12
    _case("extract_answer", ("no tags 296",), None, None),
    # release: multiply.py:15-17 (int('') raises)
    _case("extract_answer", ("<answer></answer>",), None, None),
    # release: multiply.py:10,18 (the stripped string is returned as is)
    _case("extract_answer", ("<answer>\t-15\t</answer>",), "-15", "-15"),
    # release: multiply.py:15,18 (int('+7') parses, the string '+7' is the vote)
    _case("extract_answer", ("<answer>+7</answer>",), "+7", "7", "exact_rationals"),
    # release: multiply.py:15,18
    _case("extract_answer", ("<answer>007</answer>",), "007", "7", "exact_rationals"),
    # release: multiply.py:15,18
    _case("extract_answer", ("<answer>-0</answer>",), "-0", "0", "exact_rationals"),
    # release: multiply.py:15,18 (int() takes digit grouping by underscores)
    _case("extract_answer", ("<answer>1_000</answer>",), "1_000", "1000", "exact_rationals"),
    # release: multiply.py:15,18 (int() takes any Unicode decimal digits)
    _case("extract_answer", ("<answer>\u0664\u0662</answer>",), "\u0664\u0662", "42", "exact_rationals"),
    # release: multiply.py:15-17 (not an int)
    _case("extract_answer", ("<answer>1,234</answer>",), None, "1234", "exact_rationals"),
    _case("extract_answer", ("<answer>7.0</answer>",), None, "7", "exact_rationals"),
    _case("extract_answer", ("<answer>42.</answer>",), None, "42", "exact_rationals"),
    _case("extract_answer", ("<answer>1/2</answer>",), None, "1/2", "exact_rationals"),
    _case("extract_answer", ("<answer>0.5</answer>",), None, "1/2", "exact_rationals"),
    _case("extract_answer", ("<answer>$42$</answer>",), None, "42", "exact_rationals"),
    _case("extract_answer", ("<answer>\\frac{3}{4}</answer>",), None, "3/4", "exact_rationals"),
    _case("extract_answer", ("<answer>x = 3, y = 1/2</answer>",), None, "(3, 1/2)", "exact_rationals"),
    # release: multiply.py:15-17 (neither parses)
    _case("extract_answer", ("<answer>seven</answer>",), None, None),
    _case("extract_answer", ("<answer>3x + 2</answer>",), None, None),
    _case("extract_answer", ("<answer>4 2</answer>",), None, None),
    _case("extract_answer", ("<answer>1e3</answer>",), None, None),
    _case("extract_answer", ("<answer>1/0</answer>",), None, None),
    # release: multiply.py:15 (int() takes up to 4300 digits) -- sqlm used to refuse more than 200 chars: fixed
    _case("extract_answer", ("<answer>" + "9" * 300 + "</answer>",), "9" * 300, "9" * 300),
    # release: multiply.py:15-17 (int() raises ValueError beyond 4300 digits)
    _case("extract_answer", ("<answer>" + "9" * 4301 + "</answer>",), None, None),
    # release: multiply.py:15,18 (int()'s 4300-digit limit does not count '_' separators: 8599 characters pass)
    # -- sqlm used to refuse more than 4400 characters: fixed
    _case("extract_answer", ("<answer>" + "_".join("9" * 4300) + "</answer>",), "_".join("9" * 4300), "9" * 4300,
          "exact_rationals"),
    _case("extract_answer", ("<answer>" + "_".join("9" * 4301) + "</answer>",), None, None),

    # ------------------------------------------------------------------ majority vote
    # release: majority.py:90-91 (Counter over all answers, None included; most_common(1) = first-seen on ties)
    _case("majority_vote", (["3", "5", "3", None],), ("3", 2), ("3", 2)),
    _case("majority_vote", (["5", "3", "3", "5"],), ("5", 2), ("5", 2)),
    _case("majority_vote", (["4", None, None, "4"],), ("4", 2), ("4", 2)),
    _case("majority_vote", ([None, None, "4", None],), (None, 3), ("4", 1), "none_never_wins"),
    _case("majority_vote", ([None, "4", "4", None],), (None, 2), ("4", 2), "none_never_wins"),
    _case("majority_vote", ([None, None],), (None, 2), (None, 0), "none_never_wins"),

    # ------------------------------------------------------------------ solver and proposer rewards (math)
    # release: majority.py:92 (1 if answer == majority and majority != None) and ray_trainer.py:1194-1196
    # (proposer 1 if count != n and count > 1, count = the solver rewards summed)
    _case("math_rewards", (["7", "7", "7", "8"],), ([1.0, 1.0, 1.0, 0.0], 1.0), ([1.0, 1.0, 1.0, 0.0], 1.0)),
    _case("math_rewards", (["7"] * 4,), ([1.0] * 4, 0.0), ([1.0] * 4, 0.0)),
    _case("math_rewards", (["1", "2", "3", "4"],), ([1.0, 0.0, 0.0, 0.0], 0.0), ([1.0, 0.0, 0.0, 0.0], 0.0)),
    _case("math_rewards", ([None] * 4,), ([0.0] * 4, 0.0), ([0.0] * 4, 0.0)),
    _case("math_rewards", (["2", None, "2", "3"],), ([1.0, 0.0, 1.0, 0.0], 1.0), ([1.0, 0.0, 1.0, 0.0], 1.0)),
    _case("math_rewards", (["5", "3", "3", "5"],), ([1.0, 0.0, 0.0, 1.0], 1.0), ([1.0, 0.0, 0.0, 1.0], 1.0)),
    _case("math_rewards", (["4", None, None, "4"],), ([1.0, 0.0, 0.0, 1.0], 1.0), ([1.0, 0.0, 0.0, 1.0], 1.0)),
    # release: majority.py:90-92 (None wins or ties first -> nobody is paid) and ray_trainer.py:1194-1196
    _case("math_rewards", ([None, "4", "4", None],), ([0.0] * 4, 0.0), ([0.0, 1.0, 1.0, 0.0], 1.0),
          "none_never_wins"),
    _case("math_rewards", ([None, None, None, "4"],), ([0.0] * 4, 0.0), ([0.0, 0.0, 0.0, 1.0], 0.0),
          "none_never_wins"),
    # release: ray_trainer.py:1195 (only the 1 < k < N gate exists)
    _case("math_rewards", (["1", "2", "3", "4"], "paper"), ([1.0, 0.0, 0.0, 0.0], 0.0),
          ([1.0, 0.0, 0.0, 0.0], 1.0), "paper_gate"),

    # ------------------------------------------------------------------ proposal parsing
    # release: ray_trainer.py:1059-1063 (parser v1: the decoded response is the question, mask 1, no strip)
    _case("parse_question", ("multiplication", "563+247-189"), "563+247-189", "563+247-189", release_mask=1),
    _case("parse_question", ("multiplication", "  563+247-189 \n"), "  563+247-189 \n", "563+247-189",
          "question_text_trim", release_mask=1),
    _case("parse_question", ("multiplication", ""), "", None, "empty_proposal", release_mask=1),
    _case("parse_question", ("multiplication", "   \n"), "   \n", None, "empty_proposal", release_mask=1),
    # release: ray_trainer.py:1068-1070 (parser v2: response_str.split('Selected Question')[-1], mask 1)
    _case("parse_question", ("algebra", "1. ...\n2. ...\n3. ...\nSelected Question: Solve 2x + 3 = 7."),
          ": Solve 2x + 3 = 7.", "Solve 2x + 3 = 7.", "question_text_trim", release_mask=1),
    _case("parse_question", ("algebra", "Selected Question: a\n**Selected Question:** **b**"), ":** **b**", "b",
          "question_text_trim", release_mask=1),
    _case("parse_question", ("algebra", "Selected Question:"), ":", None, "empty_selected_question",
          release_mask=1),
    _case("parse_question", ("algebra", "Selected Question:   \n"), ":   \n", None, "empty_selected_question",
          release_mask=1),
    # release: ray_trainer.py:1065-1067 (no marker: the whole response is asked, mask 0, never applied)
    _case("parse_question", ("algebra", "three problems, none selected"), "three problems, none selected", None,
          "invalid_masked", release_mask=0),
    _case("parse_question", ("algebra", "selected question: x"), "selected question: x", None,
          "invalid_masked", release_mask=0),
    # release: ray_trainer.py:79-80 (problem = text before the first 'Test Cases:', stripped), :1080-1082 (mask 1)
    _case("parse_question", ("coding", PROPOSAL), PROPOSAL.split("Test Cases:")[0].strip(),
          PROPOSAL.split("Test Cases:")[0].strip(), release_mask=1),
    # release: ray_trainer.py:114-116 ('error' without the marker) and :1077-1079 (dummy tests, mask 0)
    _case("parse_question", ("coding", "Problem Description: x"), "Problem Description: x", None,
          "invalid_masked", release_mask=0),
    # release: ray_trainer.py:118-130 (no '|||' line: empty test lists, still mask 1; sf/utils.py:400-402 and
    # sf/__init__.py:80-81 -> every program scores 0)
    _case("parse_question", ("coding", "Problem Description: x\nTest Cases:\nnothing here"),
          "Problem Description: x", None, "coding_validity", release_mask=1),
    # release: ray_trainer.py:79-80 (empty problem is kept, mask 1 at :1080-1082; the solver is asked the bare
    # instruction, :98-101, and scored on the tests as usual: the pass_fraction case of the same proposal below)
    _case("parse_question", ("coding", "Test Cases:\n1 ||| 1\n"), "", None, "coding_validity", release_mask=1),
    _case("parse_question", ("coding", "Test Cases:\n-9 ||| -9\n"), "", None, "coding_validity", release_mask=1),

    # ------------------------------------------------------------------ test lines
    # release: ray_trainer.py:124-130 (lines holding '|||', split once, both sides stripped)
    _case("parse_tests", (PROPOSAL,), [("1 2 3", "6"), ("4 4", "8")], [("1 2 3", "6"), ("4 4", "8")]),
    # release: ray_trainer.py:125-130 (an empty output is kept) -- sqlm used to drop it: fixed
    _case("parse_tests", ("Test Cases:\n10 20 |||\n",), [("10 20", "")], [("10 20", "")]),
    _case("parse_tests", ("Test Cases:\n||| 5\n",), [("", "5")], [("", "5")]),
    # release: ray_trainer.py:128 (split('|||', 1): the rest is the output)
    _case("parse_tests", ("Test Cases:\n1 ||| 2 ||| 3\n",), [("1", "2 ||| 3")], [("1", "2 ||| 3")]),
    # release: ray_trainer.py:118 (the section starts right after the marker, on the same line too)
    _case("parse_tests", ("Test Cases: 8 -3 ||| 5",), [("8 -3", "5")], [("8 -3", "5")]),
    # release: ray_trainer.py:114-116 (no marker: 'error', no tests)
    _case("parse_tests", ("no marker 1 ||| 2",), [], []),
    # release: ray_trainer.py:114,118 (parts[1]: between the first marker and the second) -- sqlm used to read
    # after the last marker: fixed
    _case("parse_tests", ("Test Cases:\n1 ||| 1\nTest Cases:\n2 ||| 2\n",), [("1", "1")], [("1", "1")]),
    # release: ray_trainer.py:124-140 (all 12 kept) and sf/__init__.py:85,89 (only the first 10 scored)
    # -- sqlm used to score all of them: fixed (rewards.MAX_TESTS)
    _case("parse_tests", (TWELVE_TESTS,), [(str(i), str(i)) for i in range(10)],
          [(str(i), str(i)) for i in range(10)]),
    # release: ray_trainer.py:129-130 (only whitespace is stripped)
    _case("parse_tests", ("Test Cases:\n1. 5 ||| 5\n",), [("1. 5", "5")], [("5", "5")], "test_line_cleanup"),
    _case("parse_tests", ("Test Cases:\n`-1 1` ||| `0`\n",), [("`-1 1`", "`0`")], [("-1 1", "0")],
          "test_line_cleanup"),
    # release: ray_trainer.py:130 and sf/utils.py:345 (a written '\n' stays two characters)
    _case("parse_tests", ("Test Cases:\n1 2 ||| 3\\n\n",), [("1 2", "3\\n")], [("1 2", "3")], "literal_newline"),

    # ------------------------------------------------------------------ code extraction
    # release: sf/__init__.py:46-47 (after the last '```python', up to the next '```')
    _case("extract_code", ("Idea.\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\n",),
          "print(2)", "print(2)"),
    # release: sf/__init__.py:47 (a python block followed by an output block: still the python block)
    _case("extract_code", ("```python\nprint(7)\n```\nOutput:\n```\n7\n```",), "print(7)", "print(7)"),
    # release: sf/__init__.py:47 (an unclosed last block runs to the end) -- sqlm used to miss it: fixed
    _case("extract_code", ("Here:\n```python\nprint(1)\n",), "print(1)", "print(1)"),
    # release: sf/__init__.py:47 (an inline mention before the real block does not matter)
    _case("extract_code", ("Use ```python ... ``` blocks.\n```python\nprint(2)\n```",), "print(2)", "print(2)"),
    # release: sf/__init__.py:48-57 (no '```python': the first fenced block, its one-word tag line dropped)
    # -- sqlm used to refuse untagged and ```Python / ```py blocks: fixed
    _case("extract_code", ("```\nprint(1)\n```",), "print(1)", "print(1)"),
    _case("extract_code", ("```Python\nprint(1)\n```",), "print(1)", "print(1)"),
    _case("extract_code", ("```py\nprint(1)\n```",), "print(1)", "print(1)"),
    _case("extract_code", ("```\n3 4\n```\nthen\n```\nprint(7)\n```",), "3 4", "3 4"),
    # release: sf/__init__.py:48-57 (first block; sqlm: last python-tagged block)
    _case("extract_code", ("```Python\nprint(1)\n```\n```Python\nprint(2)\n```",), "print(1)", "print(2)",
          "python_tag_case"),
    # release: sf/__init__.py:47 (split at '```python' keeps the rest of the tag line in the program)
    _case("extract_code", ("```python3\nprint(1)\n```",), "3\nprint(1)", "print(1)", "fence_tag_line"),
    _case("extract_code", ("```python3.10\nprint(1)\n```",), "3.10\nprint(1)", "print(1)", "fence_tag_line"),
    _case("extract_code", ("```python showLineNumbers\nprint(1)\n```",), " showLineNumbers\nprint(1)", "print(1)",
          "fence_tag_line"),
    # -- sqlm used to run its fallback, 'python title="a.py"\nprint(1)', a SyntaxError: fixed
    _case("extract_code", ('```python title="a.py"\nprint(1)\n```',), ' title="a.py"\nprint(1)', "print(1)",
          "fence_tag_line"),
    _case("extract_code", ('Here: ```python title="a.py"\nprint(1)\n```',), ' title="a.py"\nprint(1)', "print(1)",
          "fence_tag_line"),
    # release: sf/__init__.py:47 (split('```python')[-1]: a fence reopened at once starts the last block)
    # -- sqlm used to run the first block: fixed
    _case("extract_code", ("```python\nprint(0)\n```python\nprint(2)\n```",), "print(2)", "print(2)"),
    # release: sf/__init__.py:47 (the split ignores line ends: CRLF blocks, the last one runs)
    # -- sqlm used to want '\n' right after the tag, and ran the first block: fixed
    _case("extract_code", ("```python\r\nprint(1)\r\n```\r\n```python\r\nprint(2)\r\n```",), "print(2)", "print(2)"),
    # release: sf/__init__.py:46-47 (the last '```python' anywhere, in a sentence too, then up to the next '```')
    _case("extract_code", ("```python\nprint(1)\n```\nThe ```python block above reads stdin.",),
          " block above reads stdin.", "print(1)", "fence_in_prose"),
    _case("extract_code", ("```python\nprint(1)\n```\nI wrap code in ```python``` fences.",), "", "print(1)",
          "fence_in_prose"),
    # release: sf/__init__.py:58-59 (no fence at all: score 0, nothing is run)
    _case("extract_code", ("print(1)",), None, None),
    _case("extract_code", ("I would add the numbers.",), None, None),
    # release: sf/__init__.py:47 (a blank block is run as an empty program)
    _case("extract_code", ("```python\n\n```",), "", None, "blank_program"),

    # ------------------------------------------------------------------ output comparison (stdout, expected)
    # release: sf/utils.py:340-350 (status Success, run Finished, then stdout.rstrip('\n') == expected.rstrip('\n'))
    _case("passes", ("6\n", "6"), True, True),
    _case("passes", ("6\n\n\n", "6"), True, True),
    _case("passes", ("1 2\n3\n", "1 2\n3"), True, True),
    _case("passes", ("", ""), True, True),
    _case("passes", ("\n\n", ""), True, True),
    _case("passes", ("\n6\n", "6"), False, False),
    _case("passes", ("1  2\n", "1 2"), False, False),
    _case("passes", ("06\n", "6"), False, False),
    _case("passes", ("6 \n", "6"), False, True, "output_whitespace"),
    _case("passes", ("6\r\n", "6"), False, True, "output_whitespace"),
    _case("passes", ("1 2 \n3\n", "1 2\n3"), False, True, "output_whitespace"),
    # release: sf/utils.py:304-329 (a non-zero exit or a timeout is a runtime error / timeout, never a pass)
    _case("passes", ("6\n", "6", 1), False, False),
    _case("passes", ("6\n", "6", None, True), False, False),

    # ------------------------------------------------------------------ pass fractions (proposal, program)
    # release: sf/__init__.py:83-90 (passed among the first min(n, 10) tests / min(n, 10))
    _case("pass_fraction", (PROPOSAL, "sum"), 1.0, 1.0),
    _case("pass_fraction", ("Test Cases:\n1 2 ||| 3\n5 ||| 6\n", "sum"), 0.5, 0.5),
    # 12 tests, the last two wrong: the release scores only the first 10
    _case("pass_fraction", ("Test Cases:\n" + "1 ||| 1\n" * 10 + "1 ||| 9\n" * 2, "sum"), 1.0, 1.0),
    # 12 tests, the first two wrong
    _case("pass_fraction", ("Test Cases:\n" + "1 ||| 9\n" * 2 + "1 ||| 1\n" * 10, "sum"), 0.8, 0.8),
    # release: sf/utils.py:400-402 and sf/__init__.py:80-81 (no tests: 0)
    _case("pass_fraction", ("Test Cases:\nnone\n", "sum"), 0.0, 0.0),
    # release: sf/__init__.py:83-90 (an empty problem's tests score as any others; sqlm never asks it: coding_validity)
    _case("pass_fraction", ("Test Cases:\n-9 ||| -9\n", "sum"), 1.0, 1.0),
    # release: ray_trainer.py:130 + sf/utils.py:345 (an empty expected output passes a program that prints nothing)
    _case("pass_fraction", ("Test Cases:\n1 3 5 |||\n2 3 ||| 2\n", "evens"), 1.0, 1.0),
    # release: sf/utils.py:345 (the written '\n' never matches)
    _case("pass_fraction", ("Test Cases:\n1 2 ||| 3\\n\n", "sum"), 0.0, 1.0, "literal_newline"),

    # ------------------------------------------------------------------ code rewards (pass fractions of N programs)
    # release: ray_trainer.py:1213-1215 (proposer 1 if 0 < mean < 1); the solver reward is the pass fraction
    _case("code_rewards", ([1.0, 0.6, 0.0, 0.2],), ([1.0, 0.6, 0.0, 0.2], 1.0), ([1.0, 0.6, 0.0, 0.2], 1.0)),
    _case("code_rewards", ([1.0] * 4,), ([1.0] * 4, 0.0), ([1.0] * 4, 0.0)),
    _case("code_rewards", ([0.0] * 4,), ([0.0] * 4, 0.0), ([0.0] * 4, 0.0)),
]

# Stand-in programs for pass_fraction, so the fixture pins the scoring rule, not the sandbox's process handling.
PROGRAMS = {
    "sum": lambda stdin: f"{sum(map(int, stdin.split()))}\n",
    "evens": lambda stdin: " ".join(x for x in stdin.split() if int(x) % 2 == 0) + "\n",
}


def run_result(stdout: str, returncode: int | None = 0, timed_out: bool = False) -> sandbox.RunResult:
    values = dict(stdout=stdout, stderr="", returncode=returncode, timed_out=timed_out, output_truncated=False,
                  seconds=0.0)
    return sandbox.RunResult(**{f.name: values[f.name] for f in dataclasses.fields(sandbox.RunResult)
                                if f.name in values})


def passes(stdout: str, expected: str, returncode: int | None = 0, timed_out: bool = False) -> bool:
    return sandbox.passes(run_result(stdout, returncode, timed_out), expected)


def pass_fraction(proposal: str, program: str) -> float:
    return sandbox.pass_fraction(program, rewards.parse_tests(proposal))


FUNCTIONS = {
    "extract_answer": rewards.extract_answer,
    "majority_vote": rewards.majority_vote,
    "math_rewards": rewards.math_rewards,
    "parse_question": rewards.parse_question,
    "parse_tests": rewards.parse_tests,
    "extract_code": rewards.extract_code,
    "passes": passes,
    "pass_fraction": pass_fraction,
    "code_rewards": rewards.code_rewards,
}


def comparable(fn: str, value):
    """The release's program text carries the line ends around it; they do not change what runs."""
    if fn == "extract_code" and value is not None:
        return value.strip("\r\n")
    return value


def case_id(case) -> str:
    text = repr(case["args"])
    return f"{case['fn']}-{case['differs'] or 'same'}-{text[:40]}"


@pytest.fixture(autouse=True)
def fake_programs(monkeypatch):
    """pass_fraction cases run a named stand-in program instead of a process."""
    def run_program(code, stdin="", timeout=sandbox.DEFAULT_TIMEOUT):
        return run_result(PROGRAMS[code](stdin))
    monkeypatch.setattr(sandbox, "run_program", run_program)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sqlm_matches_the_release_or_differs_on_purpose(case):
    got = FUNCTIONS[case["fn"]](*case["args"])
    if isinstance(case["sqlm"], float):
        assert got == pytest.approx(case["sqlm"])
    else:
        assert got == case["sqlm"]
    release, sqlm = comparable(case["fn"], case["release"]), comparable(case["fn"], case["sqlm"])
    if case["differs"] is None:
        assert sqlm == release, "sqlm departs from the release here: fix it or mark the case with a difference key"
    else:
        assert case["differs"] in DIFFERENCES
        assert sqlm != release, f"case marked {case['differs']!r} but sqlm and the release agree: unmark it"


def test_every_case_names_a_known_function_and_mask():
    for case in CASES:
        assert case["fn"] in FUNCTIONS
        if case["fn"] == "parse_question":
            assert case["release_mask"] in (0, 1)
            # a question the release masks (0) is one sqlm calls invalid; the reverse is a listed difference
            if case["release_mask"] == 0:
                assert case["sqlm"] is None and case["differs"] == "invalid_masked"


def test_every_difference_is_exercised():
    used = {case["differs"] for case in CASES if case["differs"]}
    assert used == set(DIFFERENCES)


def test_readme_lists_every_difference():
    """README's table "Where we differ from the release, and why" names every key of DIFFERENCES."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    heading = "Where we differ from the release, and why"
    assert heading in readme, f"README has no section {heading!r}"
    section = readme.split(heading, 1)[1]
    missing = [key for key in DIFFERENCES if f"`{key}`" not in section]
    assert not missing, f"README's table lacks {missing}"


# ---------------------------------------------------------------------- prompts
# The release's prompts, stated as data. Files hold the exact text (no added trailing newline); `{question}` and
# `{problem}` mark where our code puts the question.
RELEASE_PROMPTS = {
    # release: examples/data_preprocess/selfplay.py:33-38 (arithmetic_v1)
    "multiplication_proposer": "Generate a three-digit arithmetic problem (up to three digits). Make sure the numbers "
                               "are not similar and appear unpredictable. Do not solve the problem.",
    # release: examples/data_preprocess/selfplay.py:39-45 (linear_equations_v1)
    "algebra_proposer": "Create three diverse, challenging algebra word problems that involve linear equations with "
                        "up to two variables. Use only integers for all coefficients. The problem should be solvable "
                        "with a unique solution where each variable has a rational (integer or fractional) value. Do "
                        "not solve the problems. Then select the last one and put it in the format: Selected "
                        "Question: <question>",
    # release: ray_trainer.py:1061 and :1071 (the solver turn of parsers v1 and v2)
    "math_solver": "Let's think step by step and enclose the reasoning process and answer within <think> </think> "
                   "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
                   "<answer> RESULT_NUMBER </answer>. {question}",
    # release: examples/data_preprocess/selfplay.py:46-65 (coding_v1); it ends with a newline
    "coding_proposer": "Generate an original programming problem similar in style and difficulty to LeetCode easy "
                       "problems.\n\nRequirements:\n- The problem must take a single line of space-separated "
                       "integers as input and produce either a single integer or a space-separated list of integers "
                       "as output.\n- Provide 5 test cases in the exact format: INPUT_STRING ||| OUTPUT_STRING (no "
                       "explanations, no extra text, OUTPUT_STRING must include the trailing '\\n' if needed).\n\n"
                       "Example Output Format:\nProblem Description:\nYou are given a list of integers. Write a "
                       "program that reads the list and returns <expected output>.\n\nInput:\nA single line contains "
                       "space-separated integers a_1, a_2, ..., a_n (\u22121000 <= a_i <= 1000).\n\nOutput:\nPrint a "
                       "single integer \u2014 <expected output>.\n\nTest Cases:\n8 -3 7 0 2 ||| 14\n-2 5 -4 3 ||| 2\n"
                       "10 -10 ||| 0\n4 ||| 4\n-5 -1 -4 ||| -10\n",
    # release: ray_trainer.py:98-101 (the user turn: the stripped problem, then the instruction)
    "coding_solver": "{problem}\n\nWrite Python code to solve the problem. Present the code in \n```python\nYour "
                     "code\n```\nat the end.",
    # release: ray_trainer.py:85-95 (the system turn sent before it, with its leading and trailing newlines)
    "coding_solver_system": "\nWhen tackling complex reasoning tasks, you have access to the following actions. Use "
                            "them as needed to progress through your thought process.\n\n[ASSESS]\n\n[ADVANCE]\n\n"
                            "[VERIFY]\n\n[SIMPLIFY]\n\n[SYNTHESIZE]\n\n[PIVOT]\n\n[OUTPUT]\n\nYou should strictly "
                            "follow the format below:\n\n[ACTION NAME]\n\n# Your action step 1\n\n# Your action step "
                            "2\n\n# Your action step 3\n\n...\n\nNext action: [NEXT ACTION NAME]\n\n",
}


@pytest.mark.parametrize("name", sorted(RELEASE_PROMPTS))
def test_prompt_files_are_the_release_prompts(name):
    path = Path(__file__).resolve().parent.parent / "prompts" / f"{name}.txt"
    assert path.read_text(encoding="utf-8") == RELEASE_PROMPTS[name]

