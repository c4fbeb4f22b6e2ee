"""The ablation flags (issue: quick ablations): each changes what it should and nothing else."""

import json
import random

import pytest

import rewards
import sampler
import sqlm
from test_train import FAST, answers_from_real_samples, fake_proposals, read_jsonl, run

QUESTIONS = ["12 * 34", "5 * 6", "7 * 8", "9 * 10"]


def short_run(model_dir, out, monkeypatch, *flags, steps=3):
    tokenizer = sampler.load_model(str(model_dir), sqlm.torch.device("cpu"))[1]
    fake_proposals(monkeypatch, tokenizer, QUESTIONS)
    run(["--model", model_dir, "--steps", steps, "--out", out, *FAST, *flags])
    return read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "samples.jsonl")


def test_never_is_a_proposer_period():
    assert sqlm.parse_config(["--proposer-update-every", "never"]).proposer_update_every == 0
    assert sqlm.parse_config(["--proposer-update-every", "10"]).proposer_update_every == 10


@pytest.mark.parametrize("period, updated", [(1, [True, True, True]), (2, [True, False, True]),
                                             ("never", [False, False, False])])
def test_proposer_period_changes_only_when_the_proposer_learns(varied_dir, tmp_path, monkeypatch, period, updated):
    metrics, samples = short_run(varied_dir, tmp_path / "run", monkeypatch, "--proposer-update-every", period)
    assert [m["proposer_updated"] for m in metrics] == updated
    # The proposer's episodes (all 4 proposals are valid questions) reached the update exactly on those steps.
    assert [m["proposer_episodes_trained"] for m in metrics] == [4 if u else 0 for u in updated]
    assert all(m["solver_episodes_trained"] == 8 for m in metrics)
    # Step 0 samples before any update: identical whatever the period (nothing else changed).
    baseline, _ = short_run(varied_dir, tmp_path / "baseline", monkeypatch, steps=1)
    assert metrics[0]["solver_reward"] == baseline[0]["solver_reward"]
    assert metrics[0]["sampled_tokens"] == baseline[0]["sampled_tokens"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["proposer_update_every"] == (0 if period == "never" else period)


def test_gate_changes_only_the_proposer_reward():
    answers = [["<answer>1</answer>", "<answer>2</answer>", "<answer>3</answer>", "<answer>4</answer>"],  # count 1
               ["<answer>5</answer>", "<answer>5</answer>", "<answer>6</answer>", "<answer>7</answer>"]]  # count 2
    release = sqlm.score_questions("multiplication", ["q", "q"], answers, "release")
    paper = sqlm.score_questions("multiplication", ["q", "q"], answers, "paper")
    assert [r["proposer_reward"] for r in release] == [0.0, 1.0]
    assert [r["proposer_reward"] for r in paper] == [1.0, 1.0]
    assert [r["solver_rewards"] for r in release] == [r["solver_rewards"] for r in paper]


def test_format_reward_pays_any_parseable_answer():
    answers = [["<answer>5</answer>", "<answer>5</answer>", "<answer>6</answer>", "no answer"]]
    majority = sqlm.score_questions("multiplication", ["q"], answers, "release", "majority")[0]
    format_only = sqlm.score_questions("multiplication", ["q"], answers, "release", "format")[0]
    assert majority["solver_rewards"] == [1.0, 1.0, 0.0, 0.0]
    assert format_only["solver_rewards"] == [1.0, 1.0, 1.0, 0.0]
    assert format_only["proposer_reward"] == majority["proposer_reward"] == 1.0  # the proposer is paid as before


def test_format_reward_is_refused_for_code():
    with pytest.raises(SystemExit, match="solver-reward"):
        sqlm.parse_config(["--task", "coding", "--solver-reward", "format"])


def test_question_pool_is_generated_once_and_reused(varied_dir, tmp_path, monkeypatch):
    out = tmp_path / "pool"
    metrics, samples = short_run(varied_dir, out, monkeypatch, "--question-pool", 6, "--save-every", 1)
    pool = json.loads((out / "question_pool.json").read_text())
    assert pool["questions"] == [QUESTIONS[i % 4] for i in range(6)]
    # Each step takes the next batch_size * num_generations = 4 questions of the pool, wrapping around.
    assert [s["question"] for s in samples if s["step"] == 1] == [pool["questions"][i % 6] for i in range(4, 8)]
    assert not any(m["proposer_updated"] for m in metrics)  # no proposer in the loop
    # A resumed run reads the same pool instead of asking the proposer again.
    fake_proposals(monkeypatch, sampler.load_model(str(varied_dir), sqlm.torch.device("cpu"))[1], ["99 * 99"])
    run(["--model", varied_dir, "--steps", 4, "--out", out, *FAST, "--question-pool", 6, "--resume"])
    last = [s["question"] for s in read_jsonl(out / "samples.jsonl") if s["step"] == 3]
    assert last == [pool["questions"][i % 6] for i in range(12, 16)]


def test_truth_reward_pays_the_exact_answer_and_leaves_the_proposer_alone():
    answers = [["<answer>36</answer>", "<answer>35</answer>", "<answer>35</answer>", "no answer"]]
    majority = sqlm.score_questions("multiplication", ["12 * 3"], answers, "release", "majority")[0]
    truth = sqlm.score_questions("multiplication", ["12 * 3"], answers, "release", "truth")[0]
    assert majority["solver_rewards"] == [0.0, 1.0, 1.0, 0.0]  # the majority is wrong here
    assert truth["solver_rewards"] == [1.0, 0.0, 0.0, 0.0]
    assert truth["proposer_reward"] == majority["proposer_reward"] == 1.0
    with pytest.raises(SystemExit, match="checked exactly"):
        sqlm.parse_config(["--task", "algebra", "--solver-reward", "truth"])


# ----- vote-strength remedies (issue 19): hand-made votes of N = 8 ----------------------------------------------

def votes(*counts):
    """One question's 8 answers whose answer groups have these sizes, the rest unparseable: votes(5, 2) ->
    five '1's, two '2's, one answer without the format."""
    answers = [f"<answer>{value}</answer>" for value, count in enumerate(counts, start=1) for _ in range(count)]
    return answers + ["no answer"] * (8 - len(answers))


@pytest.mark.parametrize("counts, paid_off, paid_at_5", [
    ((8,), 0.0, 0.0),  # unanimous: too easy, whatever K
    ((7, 1), 1.0, 1.0),
    ((5, 3), 1.0, 1.0),  # k = K: still paid
    ((4, 4), 1.0, 0.0),  # k < K: the vote is too weak to teach
    ((2, 2, 2, 2), 1.0, 0.0),
    ((1,) * 8, 0.0, 0.0),  # no two answers agree: too hard under the release gate, whatever K
])
def test_proposer_min_majority_pays_only_strong_votes(counts, paid_off, paid_at_5):
    answers = [votes(*counts)]
    off = sqlm.score_questions("multiplication", ["q"], answers, "release", "majority", 0)[0]
    at_5 = sqlm.score_questions("multiplication", ["q"], answers, "release", "majority", 5)[0]
    assert off["proposer_reward"] == paid_off and at_5["proposer_reward"] == paid_at_5
    assert off["solver_rewards"] == at_5["solver_rewards"]  # the solver's rewards do not change
    assert rewards.math_rewards(votes(*counts), "release", 5)[1] == paid_at_5


def test_min_majority_flags_default_off_and_are_checked():
    config = sqlm.parse_config([])
    assert config.proposer_min_majority == 0 and config.solver_min_majority == 0  # every earlier number stands
    assert sqlm.parse_config(["--num-generations", "8", "--solver-min-majority", "5"]).solver_min_majority == 5
    for bad in (["--proposer-min-majority", "-1"], ["--num-generations", "4", "--solver-min-majority", "5"],
                ["--task", "coding", "--proposer-min-majority", "2"]):
        with pytest.raises(SystemExit, match="error: "):
            sqlm.parse_config(bad)


@pytest.mark.parametrize("threshold, trained_questions", [(0, ["12 * 34", "5 * 6", "7 * 8", "9 * 10"]),
                                                         (2, ["5 * 6"])])
def test_solver_min_majority_keeps_weak_votes_out_of_the_loss(varied_dir, monkeypatch, threshold, trained_questions):
    model, tokenizer = sampler.load_model(str(varied_dir), sqlm.torch.device("cpu"))
    fake_proposals(monkeypatch, tokenizer, QUESTIONS)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # The solver's answers, by question: 5 * 6 gets two equal answers (k = 2), every other question two different
    # ones (k = 1).
    scripted = {"5 * 6": ["<answer>30</answer>", "<answer>30</answer>"]}

    def sample_completions(config, model_, tokenizer_, stop_ids, prompts):
        topic = sampler.chat_prompt_ids(tokenizer, sqlm.tasks.read_prompt("multiplication_proposer"))
        if prompts and prompts[0] == topic:
            return [tokenizer(QUESTIONS[i % 4])["input_ids"] + [stop] for i in range(len(prompts))]
        texts = []
        for k in range(0, len(prompts), 2):
            question = next(q for q in QUESTIONS if q in tokenizer.decode(prompts[k]))
            texts += scripted.get(question, ["<answer>1</answer>", "<answer>2</answer>"])
        return [tokenizer(text)["input_ids"] + [stop] for text in texts]

    monkeypatch.setattr(sqlm, "sample_completions", sample_completions)
    config = sqlm.Config(batch_size=2, num_generations=2, max_new_tokens=6, device="cpu",
                         solver_min_majority=threshold)
    stop_ids = sampler.stop_token_ids(model, tokenizer)
    _, solver, records, stats = sqlm.rollout(config, model, tokenizer, stop_ids, set())
    kept = [records[k // 2]["question"] for k, episode in enumerate(solver) if episode.in_loss]
    assert sorted(set(kept)) == sorted(trained_questions)
    assert stats["solver_questions_trained"] == len(trained_questions) / 4
    optimizer = sqlm.torch.optim.AdamW(model.parameters())
    _, metrics = sqlm.train_step(config, 1, model, model, None, optimizer, tokenizer, stop_ids, set(), None,
                                 sqlm.torch.device("cpu"))
    assert metrics["solver_episodes_trained"] == 2 * len(trained_questions)
    # update_policy itself honours in_loss: the episodes out of the loss change nothing, however large their
    # advantages.
    kept = [episode for episode in solver if episode.in_loss]
    dropped = [sqlm.Episode(e.prompt_ids, e.completion_ids, 0.0, 50.0, in_loss=False) for e in solver]
    assert trained_weights(model, config, kept) == trained_weights(model, config, kept + dropped)


def trained_weights(model, config, episodes):
    """The weights after one update_policy call on a copy of `model`, from fixed RNG states."""
    copy = sampler.AutoModelForCausalLM.from_config(model.config)
    copy.load_state_dict(model.state_dict())
    random.seed(0)
    sqlm.update_policy(config, copy, None, sqlm.torch.optim.AdamW(copy.parameters(), lr=1e-2), episodes,
                       sqlm.torch.device("cpu"))
    return [round(value, 6) for value in sqlm.torch.cat([p.detach().flatten() for p in copy.parameters()]).tolist()]


def test_a_frozen_proposer_is_not_changed_by_proposer_min_majority(varied_dir, tmp_path, monkeypatch):
    """--proposer-min-majority changes only the proposer's reward, so with a frozen proposer the solver trains
    exactly as without it (same weights, same solver numbers): the frozen arm of a proposer-only remedy is the
    plain frozen arm (README, When does self-questioning pay?)."""
    tokenizer = sampler.load_model(str(varied_dir), sqlm.torch.device("cpu"))[1]
    runs = {}
    for name, flags in (("plain", []), ("k3", ["--proposer-min-majority", "3"])):
        fake_proposals(monkeypatch, tokenizer, QUESTIONS)
        answers_from_real_samples(monkeypatch, tokenizer)
        out = tmp_path / name
        run(["--model", varied_dir, "--steps", 2, "--out", out, *FAST, "--num-generations", 4,
             "--proposer-update-every", "never", "--lr", "1e-3", *flags])
        monkeypatch.undo()
        runs[name] = (read_jsonl(out / "metrics.jsonl"),
                      sampler.load_model(str(out / "checkpoint"), sqlm.torch.device("cpu"))[0])
    (plain, plain_model), (k3, k3_model) = runs["plain"], runs["k3"]
    assert [m["solver_reward"] for m in plain] == [m["solver_reward"] for m in k3]
    assert [m["loss"] for m in plain] == [m["loss"] for m in k3] and plain[0]["optimizer_steps"] > 0
    assert any(a["proposer_reward"] != b["proposer_reward"] for a, b in zip(plain, k3))  # the flag did act
    for a, b in zip(plain_model.parameters(), k3_model.parameters()):
        assert sqlm.torch.equal(a, b)
