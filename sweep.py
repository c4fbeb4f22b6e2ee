"""Ablations with seeds, in one command: run every arm (a set of flags) on every seed, one run after another,
then print and save a table per metric with the mean, the spread and a 95% confidence interval, and each arm's
paired difference from a baseline arm.

    python sweep.py --out runs/sweep --seeds 0 1 2 3 4 --baseline every5 \\
        --arm every5= --arm "every1=--proposer-update-every 1" --arm "never=--proposer-update-every never" \\
        --arm "pool=--question-pool 1920"

    python sweep.py ... --dry-run        # print the commands still to run, run nothing
    python sweep.py ... --report-only    # tables from the runs already finished, run nothing
    python sweep.py ... -- --steps 10    # everything after `--` is passed to every run

Each run is `{command} --seed S --out {out}/{arm}-s{S} {arm flags} {flags after --}`; the command defaults to
`python demo.py` next to this file. A run is finished when its `result.json` exists and parses; finished runs
are never redone, so stopping a sweep (Ctrl-C) and starting the same command again resumes it. A run directory
without a valid result.json is half-done: it is deleted and the run starts again. So that a live run is never
taken for a half-done one, a sweep holds OUT/.sweep.lock while its runs run, and a second sweep on that --out is
refused (--dry-run and --report-only run nothing and may run beside it).

Written to --out: `summary.md` (the tables), `summary.json` (every number and every per-seed value),
`sweep.json` (the arms' flags, so a resumed sweep cannot silently mix settings) and, when matplotlib is
installed, `overlay_training.png` / `overlay_curriculum.png` (plot.py over all finished runs).

Statistics (numpy only), per arm and metric over the arm's finished seeds: n, mean, sd (ddof=1) and a 95%
interval for the mean, by default Student's t: mean +- t(0.975, n-1) * sd / sqrt(n). `--ci bootstrap` gives the
percentile bootstrap of the mean instead; with n = 5 seeds it is too narrow (it cannot see beyond the five
values it has), so t is the honest default. Differences from the baseline are paired by seed (only seeds both
arms finished) and get the same kind of interval; `*` marks an interval that excludes 0.
"""

import argparse
import fcntl
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ARM_NAME = re.compile(r"[A-Za-z0-9_-]+")
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed, so the same runs always give the same report

# The metrics every table shows, in this order. Each is a fraction (0.762 = 76.2%) of one run:
#   accuracy_after               held-out accuracy of the final checkpoint         (result.json)
#   gain                         accuracy_after - accuracy_before                  (result.json)
#   accuracy_best_by_validation  held-out accuracy of the best-by-validation one   (result.json, if present)
#   in_band_last_third           mean in_band over the last third of the steps     (metrics.jsonl)
BUILTIN_METRICS = ["accuracy_after", "gain", "accuracy_best_by_validation", "in_band_last_third"]

# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30 (standard tables; checked by numerical
# integration of the t density). Beyond 30 degrees of freedom t_quantile_975 uses the Cornish-Fisher
# expansion around the normal quantile 1.959964, which is accurate to 1e-4 there.
T_975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423]
Z_975 = 1.959964


class SweepError(Exception):
    """Bad input: reported as one sentence on stderr, exit status 2, before anything runs."""


# ---------------------------------------------------------------------------------------------------------
# Statistics: small pure functions on lists of floats.
# ---------------------------------------------------------------------------------------------------------

def t_quantile_975(df: int) -> float:
    """t(0.975, df): the multiplier of the standard error in a two-sided 95% t interval."""
    if df < 1:
        raise ValueError("a t interval needs at least 1 degree of freedom (2 values)")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975  # Cornish-Fisher: t = z + g1/df + g2/df^2 + g3/df^3 for large df
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_interval(values: list[float], method: str = "t") -> tuple[float, float] | None:
    """95% interval for the mean of `values`; None with fewer than 2 values (no spread to measure).

    t:         mean +- t(0.975, n-1) * sd / sqrt(n)   (assumes roughly normal run-to-run noise; honest at n = 5)
    bootstrap: 2.5th and 97.5th percentiles of the means of 10,000 resamples with replacement (fixed seed);
               too narrow for few values, because a resample can never be more extreme than the sample.
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    if method == "t":
        half_width = t_quantile_975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
        return float(x.mean() - half_width), float(x.mean() + half_width)
    if method == "bootstrap":
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        means = x[rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        return float(low), float(high)
    raise ValueError(f"unknown interval method {method!r}")


def describe(values: list[float], method: str = "t") -> dict:
    """n, mean, sd (ddof=1, so it estimates the run-to-run spread) and the 95% interval of the mean.
    Anything that needs more values than there are is None (printed as n/a)."""
    x = np.asarray(values, dtype=float)
    interval = mean_interval(values, method)
    return {
        "n": len(x),
        "mean": float(x.mean()) if len(x) else None,
        "sd": float(x.std(ddof=1)) if len(x) >= 2 else None,
        "ci_low": interval[0] if interval else None,
        "ci_high": interval[1] if interval else None,
    }


def excludes_zero(stats: dict) -> bool:
    """True when the interval lies entirely above or entirely below 0: the `*` mark."""
    return stats["ci_low"] is not None and (stats["ci_low"] > 0 or stats["ci_high"] < 0)


def paired_differences(arm: dict[int, float], baseline: dict[int, float]) -> dict[int, float]:
    """arm - baseline, seed by seed, over the seeds both have. Pairing removes what a seed does to every arm
    alike (its questions, its initial sampling), so the interval of the difference is narrower than the two
    arms' intervals side by side."""
    return {seed: arm[seed] - baseline[seed] for seed in sorted(arm.keys() & baseline.keys())}


# ---------------------------------------------------------------------------------------------------------
# Reading one run: result.json and metrics.jsonl.
# ---------------------------------------------------------------------------------------------------------

def is_number(value) -> bool:
    """A finite int or float, not a bool (JSON true would otherwise count as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_result(run_dir: Path) -> dict | None:
    """The run's result.json as a dict, or None when the run is not finished (missing, truncated, not an object)."""
    try:
        result = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def read_metrics(path: Path) -> list[dict]:
    """The per-step log, one JSON object a line. A last line that does not parse is dropped: it is what a run
    killed while writing leaves behind. A bad line anywhere else means the file is damaged, and raises."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not JSON")
    return [row for row in rows if isinstance(row, dict)]


def last_third_mean(rows: list[dict], key: str) -> float | None:
    """Mean of a per-step metrics.jsonl `key` over the last third of training (for `in_band`, the share of
    questions the proposer is paid for: the in_band_last_third metric).

    Exactly: keep the lines that have a numeric `step` and a numeric `key` (a repeated step keeps its last
    line); sort them by step; S = how many there are; average `key` over the last ceil(S / 3) of them. For
    steps 0..29 that is steps 20..29. None when no line has it. Counting lines rather than step numbers
    keeps the last third non-empty for any S >= 1 and does not assume the steps start at 0."""
    by_step = {row["step"]: row[key] for row in rows if is_number(row.get("step")) and is_number(row.get(key))}
    if not by_step:
        return None
    shares = [by_step[step] for step in sorted(by_step)]
    return float(np.mean(shares[-math.ceil(len(shares) / 3):]))


def run_values(result: dict, rows: list[dict] | None, extra_metrics: list[str]) -> dict[str, float]:
    """Every metric one finished run has, as {name: fraction}. A metric the run lacks is simply absent.

    Extra metrics come from result.json by name; one it lacks named X_last_third is the mean of metrics.jsonl's
    per-step X over the last third of the steps (last_third_mean). For an extra KEY = X_after whose
    X_before is also in result.json, X_gain = X_after - X_before is added too (hard_accuracy_after ->
    hard_accuracy_gain)."""
    values = {}
    if is_number(result.get("accuracy_after")):
        values["accuracy_after"] = float(result["accuracy_after"])
        if is_number(result.get("accuracy_before")):
            values["gain"] = float(result["accuracy_after"] - result["accuracy_before"])
    if is_number(result.get("accuracy_best_by_validation")):
        values["accuracy_best_by_validation"] = float(result["accuracy_best_by_validation"])
    share = last_third_mean(rows, "in_band") if rows is not None else None
    if share is not None:
        values["in_band_last_third"] = share
    for key in extra_metrics:
        if is_number(result.get(key)):
            values[key] = float(result[key])
        elif key.endswith("_last_third") and rows is not None:  # a per-step metrics.jsonl key, like in_band
            mean = last_third_mean(rows, key.removesuffix("_last_third"))
            if mean is not None:
                values[key] = mean
        before = key.removesuffix("_after") + "_before"
        if key.endswith("_after") and is_number(result.get(key)) and is_number(result.get(before)):
            values[key.removesuffix("_after") + "_gain"] = float(result[key] - result[before])
    return values


def metric_names(extra_metrics: list[str]) -> list[str]:
    """The built-in metrics, then each extra one followed by its automatic _gain (see run_values)."""
    names = list(BUILTIN_METRICS)
    for key in extra_metrics:
        for name in (key, key.removesuffix("_after") + "_gain" if key.endswith("_after") else None):
            if name and name not in names:
                names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------------
# The plan: which runs, with which commands, in which order.
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    arm: str
    seed: int
    directory: Path
    command: list[str]


def parse_arm(text: str) -> tuple[str, list[str]]:
    """'every1=--proposer-update-every 1' -> ('every1', ['--proposer-update-every', '1']); 'base=' -> ('base', [])."""
    name, equals, flags = text.partition("=")
    if not equals:
        raise SweepError(f"--arm {text!r} has no '=': write --arm NAME=FLAGS (FLAGS may be empty, as in base=).")
    if not ARM_NAME.fullmatch(name):
        raise SweepError(f"--arm {text!r}: an arm name uses only letters, digits, '-' and '_'.")
    try:
        return name, shlex.split(flags)
    except ValueError as error:
        raise SweepError(f"--arm {text!r}: its flags do not split like a shell line ({error}).")


def check_no_run_flags(flags: list[str], where: str) -> None:
    """--seed and --out belong to the sweep: an arm that set them would overwrite another run's directory."""
    for flag in flags:
        if flag.split("=")[0] in ("--seed", "--out"):
            raise SweepError(f"{where} sets {flag.split('=')[0]}, which the sweep sets for each run; remove it.")


def plan_runs(arms: dict[str, list[str]], seeds: list[int], out: Path, command: list[str],
              common: list[str]) -> list[Run]:
    """Seed-major order (seed 0 of every arm, then seed 1 of every arm, ...): a sweep stopped half-way has the
    same seeds for every arm, which is what a paired comparison needs, instead of all seeds of the first arms."""
    return [Run(arm, seed, out / f"{arm}-s{seed}",
                [*command, "--seed", str(seed), "--out", str(out / f"{arm}-s{seed}"), *flags, *common])
            for seed in seeds for arm, flags in arms.items()]


def check_manifest(path: Path, arms: dict[str, list[str]], common: list[str]) -> dict:
    """Refuse to resume a sweep whose arm has changed its flags since its finished runs were made: the table
    would mix two settings under one name. Returns the manifest with this invocation's arms merged in."""
    manifest = {"common_flags": common, "arms": {}}
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("arms"), dict):
            raise SweepError(f"{path} is damaged (not the JSON object of arms a sweep writes); restore it, or use a "
                             "new --out.")
        if manifest.get("common_flags") != common:
            raise SweepError(f"{path.parent} was run with common flags {manifest.get('common_flags')}, now {common}; "
                             "use a new --out for new settings.")
        for name, flags in arms.items():
            if name in manifest["arms"] and manifest["arms"][name] != flags:
                raise SweepError(f"arm {name!r} ran with flags {manifest['arms'][name]} in {path.parent}, now {flags};"
                                 " give the new setting a new arm name.")
    manifest["arms"].update(arms)
    return manifest


# ---------------------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------------------

def collect(runs: list[Run], extra_metrics: list[str]) -> dict[str, dict[str, dict[int, float]]]:
    """{arm: {metric: {seed: value}}} over the finished runs."""
    table = {run.arm: {} for run in runs}
    for run in runs:
        result = read_result(run.directory)
        if result is None:
            continue
        try:
            rows = read_metrics(run.directory / "metrics.jsonl")
        except OSError:
            rows = None
        except ValueError as error:
            print(f"warning: {error}; in_band_last_third left out for this run", file=sys.stderr)
            rows = None
        for metric, value in run_values(result, rows, extra_metrics).items():
            table[run.arm].setdefault(metric, {})[run.seed] = value
    return table


def build_report(table: dict, metrics: list[str], baseline: str, method: str) -> dict:
    """Everything summary.json holds: per metric, per arm, the statistics, the per-seed values, and the paired
    difference from the baseline (None for the baseline itself). Metrics no run has are left out."""
    report = {}
    for metric in metrics:
        if not any(metric in per_metric for per_metric in table.values()):
            continue
        report[metric] = {}
        base = table[baseline].get(metric, {})
        for arm, per_metric in table.items():
            per_seed = per_metric.get(metric, {})
            entry = describe(list(per_seed.values()), method) | {"per_seed": per_seed, "diff_vs_baseline": None}
            if arm != baseline:
                differences = paired_differences(per_seed, base)
                diff = describe(list(differences.values()), method)
                entry["diff_vs_baseline"] = diff | {"excludes_zero": excludes_zero(diff), "per_seed": differences}
            report[metric][arm] = entry
    return report


def percent_scale(entries: dict) -> float:
    """100 when every value of the metric is a fraction in [-1, 1] (accuracies, gains, shares: shown in
    percentage points), else 1 (a metric such as seconds is shown as it is)."""
    values = [v for entry in entries.values() for v in entry["per_seed"].values()]
    return 100.0 if all(abs(v) <= 1 for v in values) else 1.0


def fmt(value: float | None, scale: float) -> str:
    return "n/a" if value is None else f"{value * scale:.1f}"


def fmt_interval(stats: dict, scale: float) -> str:
    return "n/a" if stats["ci_low"] is None else f"[{fmt(stats['ci_low'], scale)}, {fmt(stats['ci_high'], scale)}]"


def markdown_table(metric: str, entries: dict, baseline: str, method: str) -> str:
    """One metric: a row per arm."""
    scale = percent_scale(entries)
    unit = "percentage points" if scale == 100 else "units of result.json"
    lines = [f"### {metric} ({unit}; 95% {'t' if method == 't' else 'bootstrap'} intervals)", "",
             f"| arm | n | mean | sd | 95% CI | diff vs {baseline} | 95% CI of diff | paired n |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, entry in entries.items():
        diff = entry["diff_vs_baseline"]
        if diff is None:
            diff_cells = ["(baseline)", "", ""]
        else:
            mark = " *" if diff["excludes_zero"] else ""
            diff_cells = [fmt(diff["mean"], scale) + mark, fmt_interval(diff, scale), str(diff["n"])]
        lines.append("| " + " | ".join([arm, str(entry["n"]), fmt(entry["mean"], scale), fmt(entry["sd"], scale),
                                         fmt_interval(entry, scale), *diff_cells]) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(report: dict, arms: dict[str, list[str]], baseline: str, method: str,
                    missing: list[str], failed: list[dict]) -> str:
    """summary.md: a legend, the arms, then one table per metric."""
    parts = ["# Sweep summary", "",
             "Per arm over its finished seeds: n, mean, sd (ddof=1) and a 95% interval of the mean "
             f"({'Student t' if method == 't' else 'percentile bootstrap, 10,000 resamples'}). "
             f"diff: the arm minus `{baseline}`, paired by seed (seeds both finished), with its 95% interval; "
             "`*`: the interval excludes 0. n/a: too few values (an interval needs 2). Fractions are shown "
             "as percentage points with one decimal (0.762 -> 76.2).", "",
             "Arms: " + "; ".join(f"`{name}` = `{shlex.join(flags) or '(defaults)'}`" for name, flags in arms.items()),
             ""]
    if missing:
        parts += ["Not finished (left out): " + ", ".join(missing), ""]
    if failed:
        parts += ["Failed: " + "; ".join(f"{f['run']} ({f['why']})" for f in failed), ""]
    parts += [markdown_table(metric, entries, baseline, method) for metric, entries in report.items()]
    return "\n".join(parts)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a reader (or a Ctrl-C) never sees half a summary."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def plot_overlay(out: Path, run_dirs: list[Path]) -> None:
    """Overlay curves of all finished runs through plot.py, in its own process; never fails the sweep."""
    if not run_dirs:
        return
    if importlib.util.find_spec("matplotlib") is None:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return
    command = [sys.executable, str(HERE / "plot.py"), *map(str, run_dirs), "--out", str(out / "overlay")]
    status = subprocess.run(command).returncode
    if status != 0:
        print(f"plots failed (exit {status}) for: {shlex.join(command)}; the numbers above are unaffected")


# ---------------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------------

def parse_command_line(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and the flags after `--` that go to every run."""
    own, common = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="sweep directory (one folder per run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[], help="seeds, e.g. 0 1 2 3 4")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=FLAGS",
                        help="an arm: its name and its flags (repeat for each arm; empty flags = the defaults)")
    parser.add_argument("--baseline", help="arm the others are compared with (default: the first arm)")
    parser.add_argument("--command", help="the run command (default: python demo.py next to sweep.py)")
    parser.add_argument("--metric", action="extend", nargs="+", default=[], metavar="KEY",
                        help="more result.json keys to tabulate (X_after also gives X_gain when X_before exists); "
                             "X_last_third: metrics.jsonl's X averaged over the last third of the steps")
    parser.add_argument("--ci", choices=["t", "bootstrap"], default="t", help="interval method (default t)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each with an equal share of the cores (default 1). The thread count "
                             "can change a run's float sums: compare arms run with the same --jobs")
    parser.add_argument("--no-plots", action="store_true", help="skip the overlay plots")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the commands still to run, run nothing")
    mode.add_argument("--report-only", action="store_true", help="report the finished runs, run nothing")
    return parser.parse_args(own), common


def validate(args: argparse.Namespace, common: list[str]) -> tuple[dict[str, list[str]], str, list[str]]:
    """Arms, baseline and command from the command line, or a SweepError naming the first problem."""
    if not args.seeds:
        raise SweepError("no seeds: pass --seeds, e.g. --seeds 0 1 2.")
    if len(set(args.seeds)) != len(args.seeds):
        raise SweepError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed.")
    if args.jobs < 1:
        raise SweepError("--jobs must be at least 1.")
    if args.out.exists() and not args.out.is_dir():
        raise SweepError(f"--out {str(args.out)!r} is a file; a sweep writes a directory there: choose another --out.")
    if not args.arm:
        raise SweepError("no arms: pass at least one --arm NAME=FLAGS, e.g. --arm base=.")
    arms = {}
    for text in args.arm:
        name, flags = parse_arm(text)
        if name in arms:
            raise SweepError(f"arm name {name!r} is given twice; each arm needs its own name.")
        check_no_run_flags(flags, f"arm {name!r}")
        arms[name] = flags
    check_no_run_flags(common, "the flags after --")
    baseline = args.baseline or next(iter(arms))
    if baseline not in arms:
        raise SweepError(f"baseline {baseline!r} is not an arm (arms: {', '.join(arms)}).")
    if args.command is None:
        command = [sys.executable, str(HERE / "demo.py")]  # next to this file, so any cwd works
    else:
        try:
            command = shlex.split(args.command)
        except ValueError as error:
            raise SweepError(f"--command {args.command!r} does not split like a shell line ({error}).")
        if not command:
            raise SweepError("--command is empty.")
    return arms, baseline, command


def lock_sweep(out: Path):
    """Hold OUT/.sweep.lock while this sweep runs (all of its --jobs): a second sweep on the same --out would take
    this one's running runs for half-done ones and delete them. The kernel drops the lock when the process ends,
    however it ends. Returns the open lock file, which must stay open (referenced) until the sweep is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = (out / ".sweep.lock").open("a")
    except OSError as error:
        raise SweepError(f"cannot write to --out {str(out)!r} ({error.strerror}); choose a writable directory.")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SweepError(f"another sweep is running in {str(out)!r} right now; wait for it to end or use another "
                         "--out (--report-only and --dry-run may run beside it).")
    return lock


def execute(runs: list[Run], jobs: int = 1) -> list[dict]:
    """Run what is not finished, `jobs` at a time (in plan order). Returns the failed runs; a failure does not stop
    the others. With jobs > 1 each run gets an equal share of the cores (OMP_NUM_THREADS) and writes its output to
    OUT/logs/RUN.log instead of the terminal, so that two runs' progress bars do not interleave."""
    todo = [run for run in runs if read_result(run.directory) is None]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to run"
          + (f", {jobs} at a time" if jobs > 1 else ""), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs))) if jobs > 1 else None
    failed, running = [], []  # running: (run, process, log file)

    def finish(run: Run, status: int, log=None) -> None:
        if log is not None:
            log.close()
        if status != 0 or read_result(run.directory) is None:  # exit 0 without a result is a failure too
            why = f"exit {status}" + ("" if status != 0 else ", but no valid result.json")
            print(f"FAILED ({why}): {shlex.join(run.command)}", file=sys.stderr, flush=True)
            failed.append({"run": run.directory.name, "command": run.command, "exit_code": status, "why": why})
        elif jobs > 1:
            print(f"finished {run.directory.name}", flush=True)

    try:
        for number, run in enumerate(todo, start=1):
            while len(running) >= jobs:  # wait for a free slot
                time.sleep(0.5)
                for entry in [entry for entry in running if entry[1].poll() is not None]:
                    running.remove(entry)
                    finish(entry[0], entry[1].returncode, entry[2])
            if run.directory.exists():  # half-done (no valid result.json): the run command refuses an existing dir
                print(f"removing half-done {run.directory}", flush=True)
                shutil.rmtree(run.directory)
            print(f"[{number}/{len(todo)}] {run.arm} seed {run.seed}: {shlex.join(run.command)}", flush=True)
            log = None
            if jobs > 1:
                (run.directory.parent / "logs").mkdir(parents=True, exist_ok=True)
                log = (run.directory.parent / "logs" / f"{run.directory.name}.log").open("w")
            try:
                process = subprocess.Popen(run.command, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
            except OSError as error:  # the program itself is missing or not executable
                print(f"cannot start {run.command[0]!r}: {error}", file=sys.stderr)
                finish(run, 127, log)
                continue
            running.append((run, process, log))
        while running:
            run, process, log = running.pop(0)
            finish(run, process.wait(), log)
    finally:  # Ctrl-C or an error: stop the runs still going; they are half-done and will be redone
        for _, process, log in running:
            process.terminate()
            process.wait()
            if log:
                log.close()
    return failed


def main(argv: list[str] | None = None) -> int:
    args, common = parse_command_line(sys.argv[1:] if argv is None else argv)
    try:
        arms, baseline, command = validate(args, common)
        manifest = check_manifest(args.out / "sweep.json", arms, common)
        lock = None if args.dry_run or args.report_only else lock_sweep(args.out)  # held while the runs run
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = plan_runs(arms, args.seeds, args.out, command, common)

    if args.dry_run:
        for run in runs:
            if read_result(run.directory) is None:
                note = "  # half-done: its directory would be removed first" if run.directory.exists() else ""
                print(shlex.join(run.command) + note)
        return 0

    failed = []
    if not args.report_only:
        write_atomic(args.out / "sweep.json", json.dumps(manifest, indent=1) + "\n")
        # A kill (SIGTERM) stops the sweep as Ctrl-C does, so that the runs it started stop with it.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            failed = execute(runs, args.jobs)
        except KeyboardInterrupt:
            print("\ninterrupted: the current runs are half-done and will be redone when this command is run again",
                  file=sys.stderr)
            return 130
        finally:
            lock.close()  # every run has ended: another sweep may use --out now
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    table = collect(runs, args.metric)
    report = build_report(table, metric_names(args.metric), baseline, args.ci)
    finished = [run for run in runs if read_result(run.directory) is not None]
    missing = [run.directory.name for run in runs if run not in finished]
    text = markdown_report(report, arms, baseline, args.ci, missing, failed)
    print(text)
    if args.out.exists():
        summary = {"baseline": baseline, "ci": args.ci, "confidence": CONFIDENCE, "seeds": args.seeds,
                   "arms": arms, "common_flags": common, "unfinished": missing, "failed": failed, "metrics": report}
        write_atomic(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
        write_atomic(args.out / "summary.md", text)
    if not args.no_plots:
        plot_overlay(args.out, [run.directory for run in finished])
    if failed:
        print(f"{len(failed)} run(s) failed:", file=sys.stderr)
        for failure in failed:
            print(f"  {failure['why']}: {shlex.join(failure['command'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
