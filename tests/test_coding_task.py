"""The coding task: proposer-written tests judge solver programs, end to end on the tiny model."""

import json

import pytest

import evaluate
import sampler
import sqlm
import tasks

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


def scripted_sampling(monkeypatch, module, tokenizer, proposal: str, answers: list[str]):
    """Make `module`'s sampling return scripted texts: the proposal for the coding proposer prompt, and the
    answers in turn for everything else. A random model never writes a parseable problem or a program, and the
    sandbox path is what these tests are about."""
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    encode = lambda text: tokenizer(text)["input_ids"] + [stop]  # noqa: E731
    topic = sampler.chat_prompt_ids(tokenizer, tasks.read_prompt("coding_proposer"))

    def scripted(prompts):
        if prompts and prompts[0] == topic:
            return [encode(proposal)] * len(prompts)
        return [encode(answers[i % len(answers)]) for i in range(len(prompts))]

    if module is sqlm:
        monkeypatch.setattr(sqlm, "sample_completions",
                            lambda config, model, tok, stop_ids, prompts: scripted(prompts))
    else:
        monkeypatch.setattr(module.sampler, "sample_in_chunks", lambda model, prompts, *a, **k: scripted(prompts))


def test_one_coding_step_runs_the_programs(tiny_dir, tmp_path, monkeypatch):
    tokenizer = sampler.load_model(str(tiny_dir), sqlm.torch.device("cpu"))[1]
    scripted_sampling(monkeypatch, sqlm, tokenizer, PROPOSAL, [RIGHT, HALF_RIGHT])
    out = tmp_path / "run"
    sqlm.main([str(a) for a in ["--task", "coding", "--model", tiny_dir, "--steps", 1, "--out", out, "--device", "cpu",
                                "--batch-size", "2", "--num-generations", "2", "--samples-per-step", "0",
                                "--max-prompt-tokens", 4096]])  # the tiny tokenizer spends a token per character
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert metrics["valid_fraction"] == 1.0 and len(samples) == 4
    for sample in samples:  # the sandbox ran both programs against the proposer's five tests
        assert sample["num_tests"] == 5 and sample["pass_fractions"] == [1.0, 0.6]
        assert sample["solver_rewards"] == [1.0, 0.6] and sample["proposer_reward"] == 1.0
    assert metrics["in_band"] == 1.0 and metrics["solver_episodes_trained"] == 8
    assert (out / "checkpoint" / "model.safetensors").exists()


def test_evaluate_coding_runs_the_programs(tiny_dir, capsys, monkeypatch):
    tokenizer = sampler.load_model(str(tiny_dir), sqlm.torch.device("cpu"))[1]
    # Problem 0 of the built-in set sums the even values: one right program, then one that prints 0.
    right = "```python\nprint(sum(x for x in map(int, input().split()) if x % 2 == 0))\n```"
    scripted_sampling(monkeypatch, evaluate, tokenizer, "", [right, "```python\nprint(0)\n```"])
    evaluate.main(["--task", "coding", "--model", str(tiny_dir), "--limit", "2", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "coding" and result["n"] == 2 and result["correct"] == 1


def test_coding_eval_is_strict_pass_at_1():
    problem = {"problem": "sum", "tests": [{"input": "1 2 3", "output": "6"}, {"input": "5", "output": "5"}]}
    assert evaluate.is_correct("coding", problem, RIGHT)
    assert not evaluate.is_correct("coding", problem, HALF_RIGHT)  # passes one test of two: not solved
    assert not evaluate.is_correct("coding", problem, NO_CODE)


def test_coding_data_file_is_accepted(tmp_path):
    data = tmp_path / "cf.jsonl"
    data.write_text(json.dumps({"problem": "p", "tests": [{"input": "1", "output": "1"}]}) + "\n")
    assert tasks.load_problems("coding", data=str(data))[0]["problem"] == "p"
    data.write_text(json.dumps({"question": "p"}) + "\n")
    with pytest.raises(SystemExit, match="does not fit --task coding"):
        tasks.load_problems("coding", data=str(data))
