"""sqlm.py end to end on a tiny random model: outputs, resume, bad input, and the rollout bookkeeping."""

import json

import pytest
import torch

import rundir
import sampler
import sqlm
import tasks

FAST = ["--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "8", "--device", "cpu",
        "--mini-batch-size", "4"]


def run(args):
    sqlm.main([str(a) for a in args])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("task", ["multiplication", "algebra"])
def test_two_steps_write_every_output(tiny_dir, tmp_path, task):
    out = tmp_path / "run"
    run(["--task", task, "--model", tiny_dir, "--steps", 2, "--out", out, *FAST])
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == task and config["steps"] == 2 and config["num_generations"] == 2
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1]
    for key in ["proposer_reward", "solver_reward", "valid_fraction", "majority_agreement", "proposer_length",
                "solver_length", "kl", "seconds", "tokens_per_s"]:
        assert key in metrics[0], key
    assert (out / "samples.jsonl").exists()
    for name in ["config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"]:
        assert (out / "checkpoint" / name).exists(), name


def fake_proposals(monkeypatch, tokenizer, texts):
    """Make the proposer say `texts` (the solver still samples for real): a random model almost never
    writes a well-formed question, and the solver path is what this tests."""
    real_sample = sqlm.sample_completions
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def sample_completions(config, model, tokenizer_, stop_ids, prompts):
        topic = sampler.chat_prompt_ids(tokenizer, tasks.read_prompt("multiplication_proposer"))
        if prompts and prompts[0] == topic:
            return [tokenizer(texts[i % len(texts)])["input_ids"] + [stop] for i in range(len(prompts))]
        return real_sample(config, model, tokenizer_, stop_ids, prompts)

    monkeypatch.setattr(sqlm, "sample_completions", sample_completions)


def test_rollout_scores_and_masks(varied_dir, monkeypatch):
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))
    # The fourth proposal is whitespace: an invalid question, never solved, masked from the proposer loss.
    fake_proposals(monkeypatch, tokenizer, ["12 * 34", "5 * 6", "7 * 8", "   "])
    config = sqlm.Config(batch_size=2, num_generations=2, max_new_tokens=6, device="cpu")
    stop_ids = sampler.stop_token_ids(model, tokenizer)
    proposer, solver, records, stats = sqlm.rollout(config, model, tokenizer, stop_ids, set())
    assert len(proposer) == 4 and [e.in_loss for e in proposer] == [True, True, True, False]
    assert len(records) == 3 and len(solver) == 3 * 2
    assert stats["valid_fraction"] == 0.75
    assert [r["question"] for r in records] == ["12 * 34", "5 * 6", "7 * 8"]
    assert proposer[3].advantage == 0.0
    # every solver episode is prompted with its own question, in order
    for k, episode in enumerate(solver):
        assert records[k // 2]["question"] in tokenizer.decode(episode.prompt_ids)


def test_unfinished_and_over_long_proposals_are_invalid(varied_dir, monkeypatch):
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    proposals = [tokenizer("12 * 34")["input_ids"] + [stop],
                 tokenizer("5 * 6")["input_ids"],  # no stop token: cut off by the length budget
                 tokenizer(" + ".join(["1"] * 200))["input_ids"] + [stop],  # its solver prompt is too long
                 tokenizer("7 * 8")["input_ids"] + [stop]]
    real_sample = sqlm.sample_completions
    monkeypatch.setattr(sqlm, "sample_completions", lambda config, model_, tok, stop_ids, prompts: proposals
                        if prompts and prompts[0] == prompts[-1] and len(prompts) == 4 else
                        real_sample(config, model_, tok, stop_ids, prompts))
    config = sqlm.Config(batch_size=2, num_generations=2, max_new_tokens=6, device="cpu", max_prompt_tokens=200)
    proposer, solver, records, stats = sqlm.rollout(config, model, tokenizer, sampler.stop_token_ids(model, tokenizer),
                                                    set())
    assert [e.in_loss for e in proposer] == [True, False, False, True]
    assert [r["question"] for r in records] == ["12 * 34", "7 * 8"] and len(solver) == 2 * 2
    assert stats["valid_fraction"] == 0.5 and stats["proposer_truncated"] == 0.25
    assert proposer[1].advantage == proposer[2].advantage == 0.0


def answers_from_real_samples(monkeypatch, tokenizer):
    """The solver still samples for real (so the RNG state matters), but each answer becomes '<answer>1</answer>'
    or '<answer>2</answer>' by the parity of its first sampled token: a random model's 8 tokens never write the
    answer format, and without differing rewards there is no advantage and nothing to update."""
    sample_answers = sqlm.sample_completions  # already the fake_proposals wrapper
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def sample_completions(config, model, tokenizer_, stop_ids, prompts):
        completions = sample_answers(config, model, tokenizer_, stop_ids, prompts)
        if prompts and "<answer>" not in tokenizer.decode(prompts[0]):  # the proposer's turn: leave it
            return completions
        return [tokenizer(f"<answer>{1 + (ids[0] % 2 if ids else 0)}</answer>")["input_ids"] + [stop]
                for ids in completions]

    monkeypatch.setattr(sqlm, "sample_completions", sample_completions)


def test_resume_continues_exactly(varied_dir, tmp_path, monkeypatch):
    tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))[1]
    fake_proposals(monkeypatch, tokenizer, ["12 * 34", "5 * 6"])
    answers_from_real_samples(monkeypatch, tokenizer)
    args = ["--model", varied_dir, "--steps", 3, *FAST, "--proposer-update-every", 1, "--lr", "1e-3",
            "--save-every", 1]
    run([*args, "--out", tmp_path / "straight"])
    # A run that stops after step 2 (its checkpoint holds 2 steps), then resumes to 3 steps.
    run([*args[:3], 2, *args[4:], "--out", tmp_path / "resumed"])
    run([*args, "--out", tmp_path / "resumed", "--resume"])
    straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [0, 1, 2]
    timing = {"seconds", "rollout_seconds", "tokens_per_s"}
    assert [{k: v for k, v in m.items() if k not in timing} for m in straight] == \
           [{k: v for k, v in m.items() if k not in timing} for m in resumed]
    assert all(m["optimizer_steps"] > 0 for m in straight)  # the resumed step too: optimizer moments matter
    weights = [sampler.load_model(str(tmp_path / name / "checkpoint"), torch.device("cpu"))[0]
               for name in ("straight", "resumed")]
    for a, b in zip(*(w.parameters() for w in weights)):
        assert torch.equal(a, b)


def test_resume_drops_log_lines_after_the_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "run"
    run(["--model", tiny_dir, "--steps", 2, "--out", out, *FAST, "--save-every", 1])
    # Pretend the run crashed after logging step 2 but before saving its checkpoint.
    with (out / "metrics.jsonl").open("a") as file:
        file.write(json.dumps({"step": 2}) + "\n")
    run(["--model", tiny_dir, "--steps", 3, "--out", out, *FAST, "--resume"])
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]
    assert "proposer_reward" in read_jsonl(out / "metrics.jsonl")[2]


def test_interrupted_save_keeps_the_previous_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "run"
    run(["--model", tiny_dir, "--steps", 1, "--out", out, *FAST])
    # A crash between the two renames of save_checkpoint leaves only checkpoint.old: resume still works.
    (out / "checkpoint").rename(out / "checkpoint.old")
    assert rundir.find_checkpoint(out) == out / "checkpoint.old"
    run(["--model", tiny_dir, "--steps", 2, "--out", out, *FAST, "--resume"])
    assert (out / "checkpoint" / "trainer_state.pt").exists() and not (out / "checkpoint.old").exists()




def test_unwritable_out_and_existing_run(tiny_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit, match="cannot write to --out"):
        run(["--model", tiny_dir, "--steps", 1, "--out", blocker / "run", *FAST])
    out = tmp_path / "run"
    run(["--model", tiny_dir, "--steps", 1, "--out", out, *FAST])
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit, match="already holds a run"):
        run(["--model", tiny_dir, "--steps", 1, "--out", out, *FAST])
    assert (out / "metrics.jsonl").read_text() == before  # nothing lost
    with pytest.raises(SystemExit, match="found no run"):
        run(["--model", tiny_dir, "--steps", 1, "--out", tmp_path / "empty", *FAST, "--resume"])


def test_nonfinite_loss_is_skipped_and_counted(varied_dir, monkeypatch):
    model, tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    real_loss = sqlm.grpo_token_loss
    monkeypatch.setattr(sqlm, "grpo_token_loss", lambda *a: (real_loss(*a)[0] * float("nan"), real_loss(*a)[1]))
    episode = sqlm.Episode(sampler.chat_prompt_ids(tokenizer, "1 * 2"), [5, 6, tokenizer.eos_token_id], 1.0, 1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    update = sqlm.update_policy(sqlm.Config(beta=0.0), model, None, optimizer, [episode], torch.device("cpu"))
    assert update["skipped_nonfinite"] == 1 and update["optimizer_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_validation_best_checkpoint_and_curriculum_metrics(varied_dir, tmp_path, monkeypatch):
    tokenizer = sampler.load_model(str(varied_dir), torch.device("cpu"))[1]
    fake_proposals(monkeypatch, tokenizer, ["12 * 34", "5*6+1"])
    answers_from_real_samples(monkeypatch, tokenizer)  # so that the second step changes the weights
    out = tmp_path / "run"
    run(["--model", varied_dir, "--steps", 2, "--out", out, *FAST, "--eval-every", 1, "--eval-limit", 4,
         "--lr", "1e-3"])
    metrics = read_jsonl(out / "metrics.jsonl")
    assert "validation_accuracy_initial" in metrics[0]
    accuracies = [m["validation_accuracy"] for m in metrics]
    # checkpoint-best holds the weights after the first step with the best validation accuracy (a later tie
    # does not replace it), so here, where the second step is no better, it is not the final checkpoint.
    assert accuracies[1] <= accuracies[0]
    best, final = (sampler.load_model(str(out / name), torch.device("cpu"))[0] for name in ("checkpoint-best",
                                                                                             "checkpoint"))
    assert any(not torch.equal(a, b) for a, b in zip(best.parameters(), final.parameters()))
    for key in ["in_band", "too_easy", "too_hard", "majority_count_0", "distinct_questions", "novelty",
                "question_length", "question_operators", "pseudo_label_accuracy", "solver_accuracy"]:
        assert key in metrics[0], key
    assert metrics[0]["novelty"] == 1.0 and metrics[1]["novelty"] == 0.0  # same two questions again
    samples = read_jsonl(out / "samples.jsonl")
    assert {s["question"]: s["truth"] for s in samples} == {"12 * 34": "408", "5*6+1": "31"}
    assert all("majority" in s and "majority_count" in s for s in samples)
