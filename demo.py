"""The CPU demo: SQLM self-play lifting a tiny model on a laptop, and the reports that explain what happened.

    python demo.py --seed 0 --out runs/tiny-demo-0      # held-out accuracy, 30 steps of self-play, accuracy again
    python demo.py report                               # what the tiny base can do before self-play
    python demo.py styles --out runs/tiny-demo-0        # how the run's solution style changed (quick vs worked)
    python demo.py overlap --out runs/tiny-demo-0       # is the gain only on test questions self-play asked?
    python demo.py --setting ladder --seed 0 --out runs/ladder-0   # the curriculum demo (tiny.py's ladder)

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

import torch

import curriculum
import evaluate
import rewards
import rundir
import sampler
import sqlm
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
    return evaluate.load_problems("multiplication", data=str(base_dir / "test.jsonl"))


def heldout_correct(model_dir: str, problems: list[dict]) -> list[bool]:
    """Greedy right/wrong on each problem, through our sampler."""
    model, tokenizer, stop_ids = load(model_dir)
    budget = evaluate.max_new_tokens("multiplication", model)
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
    started = time.time()
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
    budget = evaluate.max_new_tokens("multiplication", model)
    greedy = evaluate.score(model, tokenizer, "multiplication", problems, stop_ids, budget)["is_correct"]
    torch.manual_seed(seed)  # the samples below are then reproducible
    prompts = [sampler.chat_prompt_ids(tokenizer, evaluate.solver_prompt("multiplication", p["question"]))
               for p in problems]
    pad = sampler.pad_token_id(tokenizer, stop_ids)
    sampled = sampler.sample_in_chunks(model, [p for p in prompts for _ in range(votes)], budget, temperature,
                                       stop_ids, pad, chunk_size=256)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in sampled]
    answers = [rewards.extract_answer(text) for text in texts]
    right = [answer == rewards.canonical_answer(problems[i // votes]["answer"]) for i, answer in enumerate(answers)]
    worked = [tiny.is_worked(text) for text in texts]
    majority_right, paid = [], []
    for i, problem in enumerate(problems):
        group = answers[i * votes:(i + 1) * votes]
        majority, _ = rewards.majority_vote(group)
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
    per_rung = {f"rung_{rung}": {"problems": rungs.count(rung),
                                 "greedy_accuracy": mean(on_rung(greedy, rung)),
                                 f"majority_of_{votes}_accuracy": mean(on_rung(majority_right, rung)),
                                 "proposer_paid_share": mean(on_rung(paid, rung)),
                                 "share_of_proposals": mean([r == rung for r in proposed])}
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


COMMANDS = ("report", "styles", "overlap")  # without one of these first, demo.py runs the demo


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    parser = argparse.ArgumentParser(
        prog=f"demo.py{'' if command == 'run' else ' ' + command}", description=__doc__.split("\n\n")[0],
        epilog="Commands: (none) runs the demo, and passes flags it does not know on to sqlm.py (see python sqlm.py "
               "--help); report, styles and overlap are the reports above.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the self-play run (and of the report's samples)")
    parser.add_argument("--out", default="runs/tiny-demo", help="the run directory (run writes it, reports read it)")
    if command in ("run", "report"):
        parser.add_argument("--setting", default="uniform", choices=sorted(tiny.RECIPES),
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
    else:
        for line in style_report(args.out) if command == "styles" else [heldout_overlap(args.out)]:
            print(json.dumps(line))


if __name__ == "__main__":
    main()
