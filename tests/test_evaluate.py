import json
from fractions import Fraction

import pytest
import torch

import evaluate
import rewards
import sampler
import tasks


def test_multiplication_set_is_tinyzero_style():
    problems = tasks.multiplication_problems()
    assert len(problems) == 4096
    assert len({p["question"] for p in problems}) == 4096  # deduplicated
    assert problems == tasks.multiplication_problems()  # deterministic (seed 1)
    assert problems[:50] != tasks.multiplication_problems(seed=tasks.VALIDATION_SEED)[:50]
    digits = [len(x) for p in problems for x in p["question"].split(" * ")]
    # 1 digit w.p. 1/4, 2 digits w.p. 1/4, 3 digits w.p. 1/2 (dedup trims a few small pairs)
    assert 0.45 < digits.count(3) / len(digits) < 0.55 and 0.2 < digits.count(1) / len(digits) < 0.27
    for p in problems[:100]:
        a, b = map(int, p["question"].split(" * "))
        assert p["answer"] == str(a * b)


def test_algebra_set_answers_are_canonical_and_unique():
    problems = tasks.algebra_problems()
    assert len(problems) == 100 and len({p["question"] for p in problems}) == 100
    assert problems == tasks.algebra_problems()
    for p in problems:
        assert rewards.canonical_answer(p["answer"]) == p["answer"]


def test_algebra_answers_solve_their_equations():
    for p in tasks.algebra_problems(n=300):
        q = p["question"]
        if q.startswith("Solve for x:"):  # ax + b = cx + d
            left, right = q[len("Solve for x: "):-1].split(" = ")
            a, b = (int(t) for t in left.replace("x", "").split(" + "))
            c, d = (int(t) for t in right.replace("x", "").split(" + "))
            x = Fraction(p["answer"])
            assert a * x + b == c * x + d


def test_math_scoring_is_strict():
    problem = {"question": "12 * 3", "answer": "36"}
    assert evaluate.is_correct("multiplication", problem, "<think>...</think> <answer> 36 </answer>")
    assert evaluate.is_correct("multiplication", problem, "<answer>36.0</answer>")
    assert not evaluate.is_correct("multiplication", problem, "the answer is 36")
    assert evaluate.is_correct("algebra", {"question": "q", "answer": "(3, 1/2)"}, "<answer>x = 3, y = 0.5</answer>")


def test_cli_prints_a_json_line(tiny_dir, capsys, monkeypatch):
    """Scripted answers (a random model answers nothing): right for problems 0, 2, 5, wrong or missing else."""
    tokenizer = sampler.load_model(str(tiny_dir), torch.device("cpu"))[1]
    problems = tasks.multiplication_problems()[:8]
    texts = [f"<answer> {p['answer']} </answer>" if i in (0, 2, 5) else "<answer> 1 </answer>" if i % 2 else "no"
             for i, p in enumerate(problems)]
    monkeypatch.setattr(evaluate.sampler, "sample_in_chunks",
                        lambda model, prompts, *args, **kwargs: [tokenizer(t)["input_ids"] for t in texts])
    evaluate.main(["--task", "multiplication", "--model", str(tiny_dir), "--limit", "8", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == {"task": "multiplication", "n": 8, "accuracy": 3 / 8, "correct": 3, "model": str(tiny_dir)}


def test_data_file_replaces_the_generator(tmp_path):
    data = tmp_path / "omega.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(5)))
    assert [p["question"] for p in tasks.load_problems("algebra", limit=3, data=str(data))] == ["q0", "q1", "q2"]


def test_validation_never_holds_a_test_problem():
    for task in ("multiplication", "algebra"):
        test = {p["question"] for p in tasks.load_problems(task)}
        validation = tasks.validation_problems(task, 256)
        assert len(validation) > 50 and not test & {p["question"] for p in validation}
