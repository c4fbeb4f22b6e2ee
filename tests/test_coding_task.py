"""The coding task: proposer-written tests judge solver programs, end to end on the tiny model."""

import json

import pytest

import evaluate
import sqlm

PROPOSAL = """Problem Description:
Print the sum of the integers.

Input:
One line of space-separated integers.

Output:
Their sum.

Test Cases:
1 2 3 ||| 6
5 ||| 5
-1 1 ||| 0
10 20 ||| 30
7 7 7 ||| 21
"""
RIGHT = "Easy.\n```python\nprint(sum(map(int, input().split())))\n```"
HALF_RIGHT = "```python\nxs = list(map(int, input().split()))\nprint(xs[0] if len(xs) == 1 else sum(xs[:2]))\n```"
LOOPS = "```python\nwhile True:\n    pass\n```"
NO_CODE = "I would add the numbers."


def test_score_questions_runs_programs_against_proposer_tests():
    scored = sqlm.score_questions("coding", [PROPOSAL, PROPOSAL], [[RIGHT, HALF_RIGHT], [LOOPS, NO_CODE]], "release")
    assert scored[0]["num_tests"] == 5
    # HALF_RIGHT passes "5", "-1 1" and "10 20" (sums of at most two numbers) and fails the rest
    assert scored[0]["solver_rewards"] == [1.0, 0.6]
    assert scored[0]["proposer_reward"] == 1.0  # 0 < mean 0.8 < 1
    assert scored[1]["solver_rewards"] == [0.0, 0.0]  # a runaway loop and a missing program both score 0
    assert scored[1]["proposer_reward"] == 0.0


def test_one_coding_step_on_the_tiny_model(tiny_dir, tmp_path):
    out = tmp_path / "run"
    sqlm.main([str(a) for a in ["--task", "coding", "--model", tiny_dir, "--steps", 1, "--out", out, "--device", "cpu",
                                "--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "8"]])
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["step"] == 0 and "valid_fraction" in metrics
    assert (out / "checkpoint" / "model.safetensors").exists()


def test_evaluate_coding_on_the_tiny_model(tiny_dir, capsys):
    evaluate.main(["--task", "coding", "--model", str(tiny_dir), "--limit", "4", "--device", "cpu",
                   "--max-new-tokens", "8"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "coding" and result["n"] == 4 and result["accuracy"] == 0.0


def test_coding_eval_is_strict_pass_at_1():
    problem = {"problem": "sum", "tests": [{"input": "1 2 3", "output": "6"}, {"input": "5", "output": "5"}]}
    assert evaluate.is_correct("coding", problem, RIGHT)
    assert not evaluate.is_correct("coding", problem, HALF_RIGHT)  # passes one test of two: not solved
    assert not evaluate.is_correct("coding", problem, NO_CODE)


def test_coding_data_file_is_accepted(tmp_path):
    data = tmp_path / "cf.jsonl"
    data.write_text(json.dumps({"problem": "p", "tests": [{"input": "1", "output": "1"}]}) + "\n")
    assert evaluate.load_problems("coding", data=str(data))[0]["problem"] == "p"
    data.write_text(json.dumps({"question": "p"}) + "\n")
    with pytest.raises(SystemExit, match="needs the keys"):
        evaluate.load_problems("coding", data=str(data))
