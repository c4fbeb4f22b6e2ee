"""The CPU demo: SQLM self-play lifting a tiny model on a laptop, and the reports that explain what happened.

    python demo.py --seed 0 --out runs/tiny-demo-0      # held-out accuracy, 30 steps of self-play, accuracy again
    python demo.py report                               # what the tiny base can do before self-play
    python demo.py styles --out runs/tiny-demo-0        # how the run's solution style changed (quick vs worked)
    python demo.py overlap --out runs/tiny-demo-0       # is the gain only on test questions self-play asked?
    python demo.py --setting ladder --seed 0 --out runs/ladder-0   # the curriculum demo (tiny.py's ladder)
    python demo.py trace --seed 0                       # one SQLM step in numbers, in sqlm.py's step order

`--setting` (run and report) picks the base: `uniform` (the README's demo) or `ladder`, whose proposer starts on
the times table and has to climb to the rungs where the solver can learn (tiny.Recipe). The ladder's result.json
adds accuracy per rung and the rungs the proposer asked over the last third of the steps.

The demo builds the tiny base once (tiny.py, a few minutes), measures greedy accuracy on its held-out
problems (evaluate.py on MODEL/test.jsonl), runs sqlm.py on it exactly as on a Qwen model (no labels anywhere;
flags below, and any extra flags are passed on), and measures again: the final checkpoint, and the best one by
validation accuracy. Its last line is JSON, also written to OUT/result.json (which sweep.py reads).
Every accuracy here comes from the project's own sampler (sampler.py), greedy or at the sampling temperature.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import curriculum
import evaluate
import rewards
import rundir
import sampler
import sqlm
import tasks
import tiny

# 30 steps of 8 prompts x 8 proposals (64 questions, 512 answers a step); --samples-per-step 0 logs every
# question to samples.jsonl, so `overlap` sees them all. The validation set ships with the model.
DEMO_FLAGS = ["--steps", "30", "--batch-size", "8", "--num-generations", "8", "--lr", "5e-5", "--eval-every", "5",
              "--samples-per-step", "0", "--device", "cpu"]
# The ladder (--setting ladder) trains its proposer every step: 30 steps at the paper's period of 5 would give it
# only 6 updates to climb with (the sweep in the README compares the periods).
SETTING_FLAGS = {"uniform": [], "ladder": ["--proposer-update-every", "1"]}


def demo_threads() -> int:
    """The demo's budget: 2 CPU cores, or OMP_NUM_THREADS when it is set (sweep.py --jobs 2 runs two demos side by
    side with one thread each). The thread count can change float sums, so it is part of a run's recipe."""
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    return int(wanted) if wanted.isdigit() and int(wanted) > 0 else min(2, os.cpu_count() or 1)


def load(model_dir: str):
    model, tokenizer = sampler.load_model(model_dir, torch.device("cpu"))
    return model.eval(), tokenizer, sampler.stop_token_ids(model, tokenizer)


def heldout(base_dir: Path) -> list[dict]:
    """The base's held-out problems (base_dir/test.jsonl), which its directory ships."""
    return tasks.load_problems("multiplication", data=str(base_dir / "test.jsonl"))


def heldout_correct(model_dir: str, problems: list[dict]) -> list[bool]:
    """Greedy right/wrong on each problem, through our sampler."""
    model, tokenizer, stop_ids = load(model_dir)
    budget = tasks.max_new_tokens("multiplication", model)
    return evaluate.score(model, tokenizer, "multiplication", problems, stop_ids, budget)["is_correct"]


def accuracy(correct: list[bool]) -> float:
    return sum(correct) / len(correct)


def by_rung(correct: list[bool], problems: list[dict], name: str) -> dict:
    """{'rung_R_NAME': accuracy on the problems of rung R} (R = the multiplicand's digits)."""
    rungs = [tiny.question_rung(p["question"]) for p in problems]
    return {f"rung_{rung}_{name}": round(accuracy([c for c, r in zip(correct, rungs) if r == rung]), 4)
            for rung in sorted(set(rungs) - {None})}


def asked_rungs(run_dir: str) -> dict:
    """What the proposer asked over the last third of a run's steps: {'rung_R_share_last_third': share of valid
    questions of rung R, 'question_digits_last_third': their mean digit count} (from samples.jsonl; None when
    no valid question was asked then)."""
    steps = json.loads((Path(run_dir) / "config.json").read_text())["steps"]
    last = [row["question"] for row in read_samples(run_dir) if row["step"] >= steps - math.ceil(steps / 3)]
    rungs = [tiny.question_rung(question) for question in last]
    share = lambda count: round(count / len(last), 4) if last else None  # noqa: E731
    digits = share(sum(curriculum.question_complexity(question)["digits"] for question in last))
    return {f"rung_{rung}_share_last_third": share(rungs.count(rung)) for rung in (1, 2, 3)} | \
        {"question_digits_last_third": digits}


# ============================================================================ the demo


def run_demo(seed: int, out: str, extra_flags: list[str], setting: str = "uniform") -> dict:
    started, cpu_started = time.time(), time.process_time()
    recipe = tiny.RECIPES[setting]
    base = sampler.cache_dir() / recipe.cache_name  # built below, once the flags are known to be good
    argv = ["--model", str(base), "--validation-data", str(base / "validation.jsonl"), "--seed", str(seed),
            "--out", out, *DEMO_FLAGS, *SETTING_FLAGS[setting], *extra_flags]
    config = sqlm.parse_config(argv)  # bad flags are refused before the minutes of building and measuring below
    rundir.check_out(Path(out))  # so is an --out that cannot hold a run (sqlm.py would refuse it only after them)
    if Path(out).exists():  # or that already holds one
        rundir.check_resume(Path(out), dataclasses.asdict(config), config.resume, sqlm.RESUMABLE)
    tiny.load_or_build_tiny_base(recipe=recipe)
    problems = heldout(base)
    before = heldout_correct(str(base), problems)
    sqlm.main(argv)
    after = heldout_correct(str(Path(out) / "checkpoint"), problems)
    result = dict(seed=seed, out=out, setting=setting, heldout_problems=len(before), accuracy_before=accuracy(before),
                  accuracy_after=accuracy(after), **by_rung(before, problems, "accuracy_before"),
                  **by_rung(after, problems, "accuracy_after"), **asked_rungs(out))
    if (Path(out) / "checkpoint-best").exists():  # chosen on the validation problems, never on these
        result["accuracy_best_by_validation"] = accuracy(heldout_correct(str(Path(out) / "checkpoint-best"),
                                                                         problems))
    result["seconds"] = round(time.time() - started, 1)
    result["cpu_seconds"] = round(time.process_time() - cpu_started, 1)  # all threads: fair beside other jobs
    rundir.write_json(Path(out) / "result.json", result)
    return result


# ============================================================================ reports


def base_report(votes: int = 8, temperature: float = 1.0, seed: int = 0, setting: str = "uniform") -> dict:
    """What matters for self-play, on the held-out problems: greedy accuracy; one sample at `temperature`
    (averaged over `votes` samples a problem), overall and per solution style; the majority of `votes` samples
    (the pseudo-label self-play trains towards), overall and on the questions the proposer is paid for; the same
    per rung; and what the model proposes from the proposer prompt (and of which rung)."""
    base = tiny.load_or_build_tiny_base(recipe=tiny.RECIPES[setting])
    model, tokenizer, stop_ids = load(str(base))
    problems = heldout(base)
    budget = tasks.max_new_tokens("multiplication", model)
    greedy = evaluate.score(model, tokenizer, "multiplication", problems, stop_ids, budget)["is_correct"]
    torch.manual_seed(seed)  # the samples below are then reproducible
    prompts = [sampler.chat_prompt_ids(tokenizer, tasks.solver_prompt("multiplication", p["question"]))
               for p in problems]
    pad = sampler.pad_token_id(tokenizer, stop_ids)
    sampled = sampler.sample_in_chunks(model, [p for p in prompts for _ in range(votes)], budget, temperature,
                                       stop_ids, pad, chunk_size=256)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in sampled]
    answers = [rewards.extract_answer(text) for text in texts]
    right = [answer == rewards.canonical_answer(problems[i // votes]["answer"]) for i, answer in enumerate(answers)]
    worked = [tiny.is_worked(text) for text in texts]
    majority_right, paid, counts = [], [], []
    for i, problem in enumerate(problems):
        group = answers[i * votes:(i + 1) * votes]
        majority, count = rewards.majority_vote(group)
        counts.append(count)
        majority_right.append(majority == rewards.canonical_answer(problem["answer"]))
        paid.append(rewards.math_rewards(group)[1] > 0)  # the proposer's reward for this question
    proposals = sampler.sample_in_chunks(model, [sampler.chat_prompt_ids(tokenizer, tiny.proposer_prompt_text())] *
                                         len(problems), budget, 1.0, stop_ids, pad, chunk_size=256)
    proposal_texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in proposals]
    operands = [tiny.parse_operands(text) for text in proposal_texts]
    mean = lambda values: round(sum(values) / len(values), 3) if values else None  # noqa: E731
    rungs = [tiny.question_rung(p["question"]) for p in problems]
    on_rung = lambda values, rung: [v for v, r in zip(values, rungs) if r == rung]  # noqa: E731
    proposed = [tiny.question_rung(text) for text in proposal_texts]

    def vote_strength(rung) -> dict:
        """How good a teacher the vote is on this rung, by its strength k (the majority's count): the share of the
        rung's problems whose majority has count k, and how often that majority is the right answer."""
        pairs = list(zip(on_rung(counts, rung), on_rung(majority_right, rung)))
        return {k: {"share": mean([count == k for count, _ in pairs]),
                    "majority_accuracy": mean([right for count, right in pairs if count == k])}
                for k in sorted({count for count, _ in pairs})}

    per_rung = {f"rung_{rung}": {"problems": rungs.count(rung),
                                 "greedy_accuracy": mean(on_rung(greedy, rung)),
                                 f"majority_of_{votes}_accuracy": mean(on_rung(majority_right, rung)),
                                 "proposer_paid_share": mean(on_rung(paid, rung)),
                                 "share_of_proposals": mean([r == rung for r in proposed]),
                                 "by_majority_count": vote_strength(rung)}
                for rung in sorted(set(rungs) - {None})}
    return per_rung | {
        "greedy_accuracy": mean(greedy),
        "sample_accuracy": mean(right),
        "sample_worked_share": mean(worked),
        "sample_accuracy_worked": mean([r for r, w in zip(right, worked) if w]),
        "sample_accuracy_quick": mean([r for r, w in zip(right, worked) if not w]),
        f"majority_of_{votes}_accuracy": mean(majority_right),
        "proposer_paid_share": mean(paid),  # how often the proposer would be paid for these questions
        "paid_majority_accuracy": mean([r for r, p in zip(majority_right, paid) if p]),  # self-play needs >> 50%
        "proposal_well_formed": mean([pair is not None for pair in operands]),
        "proposal_examples": proposal_texts[:8],
    }


def read_samples(run_dir) -> list[dict]:
    """A run's samples.jsonl: one record per logged question (its solver answers, majority and exact truth)."""
    return [json.loads(line) for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines() if line.strip()]


def style_report(run_dir, window: int = 10) -> list[dict]:
    """What self-play did to the solution style: per `window` steps, the share of solver answers written in the
    worked style and how often each style's answer was right. Right means equal to the exact `truth` that
    samples.jsonl logs for auditing; training never sees it."""
    rows = read_samples(run_dir)
    report = []
    for first_step in range(0, max(row["step"] for row in rows) + 1, window):
        answers = [(tiny.is_worked(completion), answer == row["truth"]) for row in rows
                   if first_step <= row["step"] < first_step + window
                   for completion, answer in zip(row["completions"], row["answers"])]
        worked = [right for is_worked, right in answers if is_worked]
        quick = [right for is_worked, right in answers if not is_worked]
        report.append({
            "steps": f"{first_step}-{first_step + window - 1}",
            "answers": len(answers),
            "worked_share": round(len(worked) / len(answers), 3) if answers else None,
            "worked_right": round(sum(worked) / len(worked), 3) if worked else None,
            "quick_right": round(sum(quick) / len(quick), 3) if quick else None,
        })
    return report


def heldout_overlap(run_dir) -> dict:
    """Did self-play simply practise the test questions? The proposer may ask anything, held-out operand pairs
    included (it never sees their answers). Split the held-out problems into those asked during the run (as
    "a * b" or "b * a") and those never asked, and score the base and the run's final checkpoint on each."""
    base = Path(json.loads((Path(run_dir) / "config.json").read_text())["model"])  # the run's own base
    questions = [row["question"] for row in read_samples(run_dir)]
    asked = {frozenset(pair) for pair in map(tiny.parse_operands, questions) if pair}
    problems = heldout(base)
    was_asked = [frozenset(tiny.parse_operands(p["question"])) in asked for p in problems]
    before, after = heldout_correct(str(base), problems), heldout_correct(str(Path(run_dir) / "checkpoint"), problems)

    def part(correct: list[bool], keep: bool) -> float | None:
        kept = [c for c, a in zip(correct, was_asked) if a == keep]
        return round(accuracy(kept), 3) if kept else None

    from_test = [tiny.parse_operands(q) is not None and tiny.problem_bucket(q) == tiny.TEST_BUCKET for q in questions]
    return {
        "self_play_questions": len(questions),
        "share_from_test_pairs": round(sum(from_test) / len(questions), 3) if questions else None,
        "heldout_asked": sum(was_asked),
        "heldout_never_asked": len(was_asked) - sum(was_asked),
        "never_asked_before": part(before, False),
        "never_asked_after": part(after, False),
        "asked_before": part(before, True),
        "asked_after": part(after, True),
    }


# ============================================================================ one step in numbers

# The trace's step: the demo's learning rate, a batch small enough to read (B = 2 topic prompts, N = 4).
TRACE_FLAGS = ["--batch-size", "2", "--num-generations", "4", "--lr", "5e-5", "--device", "cpu"]


def trace(seed: int = 0, setting: str = "ladder") -> str:
    """One SQLM step on the demo model, printed in the order of sqlm.py's numbered steps, each block headed with
    the function that does it: what a learner reads next to the page. It calls sqlm's own functions (rollout,
    then update_policy, as train_step does at step 0), so every number is the real one; deterministic for a seed
    on a given kind of CPU (one thread, whatever the machine has). The ladder base by default: its proposer asks
    easy and hard questions, so one step shows more than one band."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums, and so the numbers, do not depend on the machine's core count
    try:
        return trace_lines(seed, setting)
    finally:
        torch.set_num_threads(threads)


def trace_lines(seed: int, setting: str) -> str:
    base = tiny.load_or_build_tiny_base(recipe=tiny.RECIPES[setting])
    config = sqlm.parse_config(["--model", str(base), "--seed", str(seed), *TRACE_FLAGS])
    rundir.seed_everything(config.seed)  # as sqlm.main does, before loading
    device = torch.device("cpu")
    policy, sampling, reference, tokenizer = sampler.load_for_training(config.model, weights=config.model,
                                                                       device=device, with_reference=True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    stop_ids = sampler.stop_token_ids(policy, tokenizer)
    proposer, solver, records, stats = sqlm.rollout(config, sampling, tokenizer, stop_ids, set())
    n, lines = config.num_generations, []
    numbers = lambda values, form="{:g}": " ".join(form.format(v) for v in values)  # noqa: E731
    lines.append(f"One SQLM step in numbers: python demo.py trace --seed {seed} (the {setting} demo model; "
                 f"B = {config.batch_size} topic prompts, N = {n}; sqlm.py's step numbers)")

    lines.append("\n1. propose (sqlm.propose): the topic prompt, through the chat template, sampled N times per copy")
    lines.append(f"   {tokenizer.decode(proposer[0].prompt_ids)!r}")
    lines.append("\n2. parse (sqlm.parse_proposal): a proposal is a question if it finished and parses")
    for group in range(config.batch_size):
        episodes = proposer[group * n:(group + 1) * n]
        texts = [repr(tokenizer.decode(e.completion_ids, skip_special_tokens=True)) for e in episodes]
        lines.append(f"   group {group}: " + ", ".join(f"{text} {'valid' if e.in_loss else 'INVALID'}"
                                                       for text, e in zip(texts, episodes)))

    shown = [next((r for r in records if band(r, n) == name), None) for name in ("too easy", "in band", "too hard")]
    shown = [record for record in shown if record is not None]
    lines.append(f"\n3. solve (sqlm.solve): each valid question N = {n} times ({len(records)} questions, "
                 f"{len(solver)} answers); {len(shown)} of them:")
    for record in shown:
        lines.append(f"   {record['question']!r}")
        lines += [f"     {text!r}" for text in record["completions"]]
    lines.append("\n4. score (sqlm.score_questions, rewards.math_rewards): "
                 "the majority answer stands in for the truth")
    for record in shown:
        k = record["majority_count"]
        lines.append(f"   {record['question']!r}: answers {numbers(record['answers'], '{}')} -> majority "
                     f"{record['majority']}, k = {k} of {n}; solver rewards {numbers(record['solver_rewards'])}")
        lines.append(f"     proposer reward {record['proposer_reward']:g} ({band(record, n)}: the release gate pays "
                     f"1 < k < N); audit, never used: the truth is {record['truth']}, the majority is "
                     f"{'right' if record['majority'] == record['truth'] else 'WRONG'}")
    lines.append("\n5. advantages (sqlm.group_advantages): A = (r - mean(r)) / (std(r) + 1e-6) within each group")
    for record in shown:
        row = records.index(record)
        rewards_ = record["solver_rewards"]
        lines.append(f"   solver, {record['question']!r}: rewards {numbers(rewards_)} (mean {np.mean(rewards_):.2f}, "
                     f"std {np.std(rewards_, ddof=1):.2f}) -> A = "
                     f"{numbers([e.advantage for e in solver[row * n:(row + 1) * n]], '{:+.2f}')}")
    for group in range(config.batch_size):
        episodes = proposer[group * n:(group + 1) * n]
        lines.append(f"   proposer, group {group}: rewards {numbers([e.reward for e in episodes])} -> A = "
                     f"{numbers([e.advantage for e in episodes], '{:+.2f}')}")

    policy.train()
    update = sqlm.update_policy(config, policy, reference, optimizer, solver, device, then=proposer)
    in_loss = sum(e.in_loss for e in solver), sum(e.in_loss for e in proposer)
    lines.append("\n6-8. update (sqlm.update_policy: completion_logprobs, grpo_token_loss, AdamW)")
    lines.append(f"   in the loss: {in_loss[0]} of {len(solver)} answers, then {in_loss[1]} of {len(proposer)} "
                 f"proposals (invalid ones stay out), in mini-batches of at most {config.mini_batch_size}: "
                 f"{update['optimizer_steps']} optimizer steps")
    lines.append(f"   token-mean loss {update['loss']:.4f}, k3 KL {update['kl']:.2e}, gradient norm "
                 f"{update['grad_norm']:.3f} (means over the optimizer steps; lr {config.lr:g})")
    lines.append("\n9. train_step: that was one step. Its line in metrics.jsonl includes")
    lines.append("   " + ", ".join(f"{key} {stats[key]:.3f}" for key in ("valid_fraction", "proposer_reward",
                                                                           "solver_reward", "in_band",
                                                                           "solver_groups_with_signal")))
    return "\n".join(lines)


def band(record: dict, n: int) -> str:
    """A math question's band from its vote (the release gate): 'too easy', 'in band' or 'too hard'."""
    return "too easy" if record["majority_count"] == n else "in band" if record["proposer_reward"] else "too hard"


COMMANDS = ("report", "styles", "overlap", "trace")  # without one of these first, demo.py runs the demo


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    parser = argparse.ArgumentParser(
        prog=f"demo.py{'' if command == 'run' else ' ' + command}", description=__doc__.split("\n\n")[0],
        epilog="Commands: (none) runs the demo, and passes flags it does not know on to sqlm.py (see python sqlm.py "
               "--help); report, styles, overlap and trace are the reports above.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the self-play run (and of the report's samples)")
    parser.add_argument("--out", default="runs/tiny-demo", help="the run directory (run writes it, reports read it)")
    if command in ("run", "report", "trace"):
        parser.add_argument("--setting", default="ladder" if command == "trace" else "uniform",
                            choices=sorted(tiny.RECIPES),
                            help="uniform: the README's demo; ladder: the curriculum demo (tiny.py's recipes)")
    if command == "report":
        parser.add_argument("--votes", type=int, default=8, help="samples per problem")
        parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    args, extra = parser.parse_known_args(argv) if command == "run" else (parser.parse_args(argv), [])
    if command == "report" and (args.votes < 1 or not args.temperature > 0):
        parser.error("--votes must be at least 1 and --temperature greater than 0")
    if command in ("styles", "overlap") and not (Path(args.out) / "samples.jsonl").exists():
        parser.error(f"no samples.jsonl in {args.out!r}: pass the run directory of a demo with --out")
    torch.set_num_threads(demo_threads())
    if command == "run":
        print(json.dumps(run_demo(args.seed, args.out, extra, args.setting)))
    elif command == "report":
        print(json.dumps(base_report(args.votes, args.temperature, args.seed, args.setting)))
    elif command == "trace":
        print(trace(args.seed, args.setting))
    else:
        for line in style_report(args.out) if command == "styles" else [heldout_overlap(args.out)]:
            print(json.dumps(line))


if __name__ == "__main__":
    main()
