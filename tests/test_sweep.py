"""sweep.py: its statistics on hand-made numbers, and its runner on a fake run command (a tiny Python script
that writes result.json and metrics.jsonl from its --seed and flags), so no model is involved."""

import json
import math
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import sweep

VALUES = [0.70, 0.72, 0.74, 0.76, 0.78]


# ----- statistics -------------------------------------------------------------------------------------------

def test_t_quantiles_match_the_tables():
    assert sweep.t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert sweep.t_quantile_975(4) == pytest.approx(2.776, abs=1e-3)
    assert sweep.t_quantile_975(10) == pytest.approx(2.228, abs=1e-3)
    assert sweep.t_quantile_975(30) == pytest.approx(2.042, abs=1e-3)
    # Past the table, the Cornish-Fisher expansion: reference values from numerical integration of the density.
    for df, expected in [(31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799), (10**6, 1.9600)]:
        assert sweep.t_quantile_975(df) == pytest.approx(expected, abs=2e-4)
    with pytest.raises(ValueError):
        sweep.t_quantile_975(0)


def test_describe_by_hand():
    stats = sweep.describe(VALUES)
    # mean 0.74; squared deviations 0.0016 + 0.0004 + 0 + 0.0004 + 0.0016 = 0.004; sd = sqrt(0.004 / 4)
    sd = math.sqrt(0.001)
    half_width = 2.7764 * sd / math.sqrt(5)  # = 0.03927
    assert stats["n"] == 5
    assert stats["mean"] == pytest.approx(0.74)
    assert stats["sd"] == pytest.approx(sd)
    assert stats["ci_low"] == pytest.approx(0.74 - half_width) and stats["ci_high"] == pytest.approx(0.74 + half_width)
    assert stats["ci_low"] == pytest.approx(0.7007, abs=1e-4)


def test_one_value_or_none_has_no_interval():
    one = sweep.describe([0.5])
    assert (one["n"], one["mean"], one["sd"], one["ci_low"], one["ci_high"]) == (1, 0.5, None, None, None)
    assert not sweep.excludes_zero(one)
    none = sweep.describe([])
    assert none["n"] == 0 and none["mean"] is None
    assert sweep.fmt(one["sd"], 100) == "n/a" and sweep.fmt_interval(one, 100) == "n/a"


def test_bootstrap_is_reproducible_and_narrower_than_t_for_five_values():
    first, second = sweep.mean_interval(VALUES, "bootstrap"), sweep.mean_interval(VALUES, "bootstrap")
    assert first == second  # fixed RNG seed
    low, high = first
    t_low, t_high = sweep.mean_interval(VALUES, "t")
    assert min(VALUES) <= low < 0.74 < high <= max(VALUES)
    assert high - low < t_high - t_low  # why t is the default at n = 5


def test_paired_difference_marked_when_its_interval_excludes_zero():
    baseline = dict(enumerate(VALUES))
    better = {seed: value + d for (seed, value), d in zip(baseline.items(), [0.02, 0.03, 0.01, 0.02, 0.02])}
    differences = sweep.paired_differences(better, baseline)
    assert list(differences.values()) == pytest.approx([0.02, 0.03, 0.01, 0.02, 0.02])
    stats = sweep.describe(list(differences.values()))
    half_width = 2.7764 * math.sqrt(0.0002 / 4) / math.sqrt(5)  # squared deviations sum to 0.0002
    assert stats["mean"] == pytest.approx(0.02)
    assert stats["ci_low"] == pytest.approx(0.02 - half_width) and stats["ci_low"] > 0
    assert sweep.excludes_zero(stats)

    noisy = {seed: value + d for (seed, value), d in zip(baseline.items(), [0.05, -0.03, 0.01, -0.02, 0.04])}
    stats = sweep.describe(list(sweep.paired_differences(noisy, baseline).values()))
    assert stats["ci_low"] < 0 < stats["ci_high"]
    assert not sweep.excludes_zero(stats)

    worse = {seed: value - 0.05 for seed, value in baseline.items()}  # below zero is marked too
    assert sweep.excludes_zero(sweep.describe(list(sweep.paired_differences(worse, baseline).values()) + [-0.04]))


def test_paired_difference_uses_only_seeds_both_arms_finished():
    differences = sweep.paired_differences({0: 0.8, 1: 0.7, 2: 0.9}, {1: 0.6, 2: 0.5, 3: 0.4})
    assert differences == pytest.approx({1: 0.1, 2: 0.4})


def test_in_band_last_third_with_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": step, "in_band": step / 10, "solver_reward": 0.5} for step in range(9)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 9, "in_ba')  # killed mid-write
    read = sweep.read_metrics(path)
    assert [row["step"] for row in read] == list(range(9))
    # S = 9 steps, last ceil(9 / 3) = 3 of them: steps 6, 7, 8
    assert sweep.last_third_mean(read, "in_band") == pytest.approx((0.6 + 0.7 + 0.8) / 3)


def test_in_band_last_third_definition_edges():
    # 10 steps -> last ceil(10 / 3) = 4; lines without in_band are skipped; a repeated step keeps its last line
    rows = [{"step": s, "in_band": float(s)} for s in range(10)] + [{"step": 9, "in_band": 19.0}, {"step": 10}]
    assert sweep.last_third_mean(rows, "in_band") == pytest.approx((6 + 7 + 8 + 19) / 4)
    assert sweep.last_third_mean([{"step": 0, "in_band": 0.25}], "in_band") == 0.25
    assert sweep.last_third_mean([{"step": 0, "in_band": None}], "in_band") is None


def test_damaged_line_in_the_middle_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "in_band": 0.1}\n{"step": 1, "in\n{"step": 2, "in_band": 0.3}\n')
    with pytest.raises(ValueError, match="line 2"):
        sweep.read_metrics(path)


def test_run_values_and_automatic_gain():
    result = {"accuracy_before": 0.65, "accuracy_after": 0.762, "hard_accuracy_before": 0.2,
              "hard_accuracy_after": 0.35, "seconds": 120.0, "flag": True}
    rows = [{"step": s, "in_band": 0.3} for s in range(3)]
    values = sweep.run_values(result, rows, ["hard_accuracy_after", "seconds", "flag", "absent"])
    assert values == pytest.approx({"accuracy_after": 0.762, "gain": 0.112, "in_band_last_third": 0.3,
                                    "hard_accuracy_after": 0.35, "hard_accuracy_gain": 0.15, "seconds": 120.0})
    assert sweep.metric_names(["hard_accuracy_after", "seconds"]) == [
        *sweep.BUILTIN_METRICS, "hard_accuracy_after", "hard_accuracy_gain", "seconds"]


def test_report_table_rows_marks_and_units():
    table = {"base": {"accuracy_after": dict(enumerate(VALUES)), "seconds": {0: 100.0, 1: 110.0}},
             "better": {"accuracy_after": {s: v + d for s, v, d in zip(range(5), VALUES, [.02, .03, .01, .02, .02])}},
             "single": {"accuracy_after": {0: 0.9}}}
    report = sweep.build_report(table, ["accuracy_after", "gain", "seconds"], "base", "t")
    assert list(report) == ["accuracy_after", "seconds"]  # a metric no run has is left out
    assert report["accuracy_after"]["base"]["diff_vs_baseline"] is None
    assert report["accuracy_after"]["better"]["diff_vs_baseline"]["excludes_zero"]
    single = report["accuracy_after"]["single"]["diff_vs_baseline"]
    assert single["n"] == 1 and single["ci_low"] is None and not single["excludes_zero"]
    text = sweep.markdown_table("accuracy_after", report["accuracy_after"], "base", "t")
    assert "| base | 5 | 74.0 | 3.2 | [70.1, 77.9] | (baseline) |" in text
    assert "| better | 5 | 76.0 |" in text and "| 2.0 * | [1.1, 2.9] | 5 |" in text
    assert "| single | 1 | 90.0 | n/a | n/a | 20.0 | n/a | 1 |" in text
    assert "| base | 2 | 105.0 |" in sweep.markdown_table("seconds", report["seconds"], "base", "t")  # not x 100


# ----- the runner, on a fake run command ----------------------------------------------------------------------

FAKE_DEMO = textwrap.dedent("""
    import argparse, json, os, sys, time
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out")
    parser.add_argument("--bonus", type=float, default=0.0)
    parser.add_argument("--fail-with", type=int, default=0)
    parser.add_argument("--log")
    parser.add_argument("--threads-log")
    parser.add_argument("--hold", help="once the run directory exists, wait until this file does (at most 60 s)")
    args = parser.parse_args()
    with open(args.log, "a") as log:
        log.write(Path(args.out).name + "\\n")
    if args.threads_log:
        with open(args.threads_log, "a") as log:
            log.write(os.environ.get("OMP_NUM_THREADS", "unset") + "\\n")
    if args.fail_with:
        sys.exit(args.fail_with)
    out = Path(args.out)
    out.mkdir(parents=True)  # like the demo: refuses an existing run directory
    deadline = time.time() + 60
    while args.hold and not os.path.exists(args.hold) and time.time() < deadline:
        time.sleep(0.05)
    rows = [{"step": s, "in_band": 0.1 * args.seed + 0.01 * s} for s in range(6)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
    after = 0.70 + 0.01 * args.seed + args.bonus
    (out / "result.json").write_text(json.dumps({"accuracy_before": 0.6, "accuracy_after": after}))
""")


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_demo.py"
    script.write_text(FAKE_DEMO)
    log = tmp_path / "calls.log"

    def sweep_args(*extra: str) -> list[str]:
        return ["--out", str(tmp_path / "sweep"), "--seeds", "0", "1", "--baseline", "base",
                "--arm", "base=", "--arm", "plus=--bonus 0.05", "--command", f"{sys.executable} {script}",
                "--no-plots", *extra, "--", "--log", str(log)]

    def calls() -> list[str]:
        return log.read_text().split() if log.exists() else []

    return sweep_args, calls, tmp_path / "sweep"


def test_sweep_runs_seed_major_and_resumes_only_unfinished_runs(fake):
    sweep_args, calls, out = fake
    assert sweep.main(sweep_args()) == 0
    assert calls() == ["base-s0", "plus-s0", "base-s1", "plus-s1"]  # seed-major

    (out / "plus-s0" / "result.json").unlink()  # a run that never finished
    (out / "base-s1" / "result.json").write_text('{"accuracy_af')  # killed while writing its result
    assert sweep.main(sweep_args()) == 0
    assert calls()[4:] == ["plus-s0", "base-s1"]  # only the unfinished ones, each run once more

    assert sweep.main(sweep_args()) == 0
    assert len(calls()) == 6  # everything finished: nothing runs

    summary = json.loads((out / "summary.json").read_text())
    after = summary["metrics"]["accuracy_after"]
    assert after["base"]["per_seed"] == pytest.approx({"0": 0.70, "1": 0.71})
    assert after["plus"]["n"] == 2 and after["plus"]["mean"] == pytest.approx(0.755)
    assert after["plus"]["diff_vs_baseline"]["mean"] == pytest.approx(0.05)
    # identical paired differences: a zero-width interval at 0.05, which excludes 0
    assert after["plus"]["diff_vs_baseline"]["excludes_zero"]
    assert summary["metrics"]["gain"]["base"]["mean"] == pytest.approx(0.105)
    # 6 steps: last ceil(6 / 3) = 2 are steps 4 and 5; in_band = 0.1 * seed + 0.01 * step
    assert summary["metrics"]["in_band_last_third"]["base"]["per_seed"] == pytest.approx({"0": 0.045, "1": 0.145})
    assert summary["unfinished"] == [] and summary["failed"] == []
    assert "### accuracy_after" in (out / "summary.md").read_text()


def test_dry_run_and_report_only_run_nothing(fake, capsys):
    sweep_args, calls, out = fake
    assert sweep.main(sweep_args("--dry-run")) == 0
    assert calls() == [] and not out.exists()
    assert capsys.readouterr().out.count("--seed") == 4

    assert sweep.main(sweep_args("--report-only")) == 0
    assert calls() == []

    assert sweep.main(sweep_args()) == 0
    (out / "plus-s1" / "result.json").unlink()
    capsys.readouterr()
    assert sweep.main(sweep_args("--dry-run")) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "plus-s1" in printed[0] and "half-done" in printed[0]
    assert (out / "plus-s1").exists()  # a dry run deletes nothing

    assert sweep.main(sweep_args("--report-only")) == 0
    assert len(calls()) == 4
    assert json.loads((out / "summary.json").read_text())["unfinished"] == ["plus-s1"]


def test_a_failing_run_is_reported_and_the_others_still_run(fake, tmp_path):
    sweep_args, calls, out = fake
    args = sweep_args()
    args[args.index("plus=--bonus 0.05")] = "plus=--fail-with 3"
    assert sweep.main(args) == 1
    assert calls() == ["base-s0", "plus-s0", "base-s1", "plus-s1"]
    summary = json.loads((out / "summary.json").read_text())
    assert [(f["run"], f["exit_code"]) for f in summary["failed"]] == [("plus-s0", 3), ("plus-s1", 3)]
    assert "--fail-with" in summary["failed"][0]["command"]
    assert summary["metrics"]["accuracy_after"]["base"]["n"] == 2
    assert summary["metrics"]["accuracy_after"]["plus"]["n"] == 0


def test_ctrl_c_leaves_the_current_run_to_be_redone(fake, monkeypatch):
    sweep_args, calls, out = fake
    real_popen = sweep.subprocess.Popen

    class InterruptedPopen(real_popen):
        interrupted = False

        def poll(self):
            status = self.wait()  # the run completes, then Ctrl-C arrives while the sweep waits on it
            if "plus-s0" in self.args[self.args.index("--out") + 1] and not InterruptedPopen.interrupted:
                InterruptedPopen.interrupted = True
                (out / "plus-s0" / "result.json").unlink()  # as if stopped before it finished
                raise KeyboardInterrupt
            return status

    monkeypatch.setattr(sweep.subprocess, "Popen", InterruptedPopen)
    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    assert sweep.main(sweep_args()) == 130
    assert calls() == ["base-s0", "plus-s0"]
    monkeypatch.undo()
    assert sweep.main(sweep_args()) == 0
    assert calls()[2:] == ["plus-s0", "base-s1", "plus-s1"]


def test_two_jobs_run_side_by_side_with_a_core_each_and_log_to_files(fake, monkeypatch):
    sweep_args, calls, out = fake
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    args = sweep_args("--jobs", "2")
    args += ["--threads-log", str(out.parent / "threads.log")]  # the fake demo records OMP_NUM_THREADS
    assert sweep.main(args) == 0
    assert sorted(calls()) == ["base-s0", "base-s1", "plus-s0", "plus-s1"]
    assert set((out.parent / "threads.log").read_text().split()) == {"1"}
    assert sorted(path.name for path in (out / "logs").iterdir()) == [
        "base-s0.log", "base-s1.log", "plus-s0.log", "plus-s1.log"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["accuracy_after"]["plus"]["per_seed"] == pytest.approx({"0": 0.75, "1": 0.76})
    assert sweep.main(sweep_args("--jobs", "0")) == 2


@pytest.mark.parametrize("change, message", [
    (("--baseline", "nope"), "baseline 'nope' is not an arm"),
    (("--arm", "base=--bonus 1"), "given twice"),
    (("--arm", "no-equals-sign"), "has no '='"),
    (("--arm", "bad name=--x 1"), "letters, digits"),
    (("--arm", "q=--bonus '1"), "shell line"),
    (("--arm", "s=--seed 3"), "sets --seed"),
])
def test_bad_input_is_one_error_and_exit_2_before_anything_runs(fake, capsys, change, message):
    sweep_args, calls, out = fake
    args = sweep_args()
    args[args.index("--no-plots"):args.index("--no-plots")] = list(change)
    assert sweep.main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert calls() == [] and not out.exists()


def test_no_seeds_and_no_arms_are_errors(fake, capsys):
    sweep_args, calls, out = fake
    args = sweep_args()
    del args[args.index("--seeds"):args.index("--seeds") + 3]
    assert sweep.main(args) == 2 and "no seeds" in capsys.readouterr().err
    assert sweep.main(["--out", str(out), "--seeds", "0"]) == 2 and "no arms" in capsys.readouterr().err
    assert sweep.main(["--out", str(out), "--seeds", "0", "0", "--arm", "a="]) == 2
    assert "repeats a seed" in capsys.readouterr().err
    assert calls() == []


def test_an_arm_whose_flags_changed_is_refused_on_resume(fake, capsys):
    sweep_args, calls, out = fake
    assert sweep.main(sweep_args()) == 0
    args = sweep_args()
    args[args.index("plus=--bonus 0.05")] = "plus=--bonus 0.09"
    assert sweep.main(args) == 2
    assert "give the new setting a new arm name" in capsys.readouterr().err
    assert len(calls()) == 4


def test_a_second_sweep_on_the_same_out_is_refused_while_the_first_runs(fake, capsys):
    """The first sweep (2 jobs) holds --out while its runs run. A second sweep on the same --out would take those
    runs for half-done ones and delete them; it is refused in one sentence, and the first one finishes."""
    sweep_args, calls, out = fake
    release = out.parent / "release"
    first_args = sweep_args("--jobs", "2")
    first_args[first_args.index("--command") + 1] += f" --hold {release}"  # its runs wait, directories made
    first = subprocess.Popen([sys.executable, str(sweep.HERE / "sweep.py"), *first_args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not ((out / "base-s0").exists() and (out / "plus-s0").exists()):
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        assert sweep.main(sweep_args()) == 2  # the same sweep, whose runs would not wait
        error = capsys.readouterr().err
        assert error.startswith("error: ") and "another sweep is running" in error and error.count("\n") == 1
        assert (out / "base-s0").exists() and (out / "plus-s0").exists() and sorted(calls()) == ["base-s0", "plus-s0"]
    finally:
        release.write_text("")
        first.wait(timeout=60)
    assert first.returncode == 0 and sorted(calls()) == ["base-s0", "base-s1", "plus-s0", "plus-s1"]


def test_a_damaged_sweep_json_or_a_file_as_out_is_one_error(fake, capsys):
    sweep_args, calls, out = fake
    out.mkdir()
    for damaged in ('{"arms": ', "[1]", '{"common_flags": []}'):
        (out / "sweep.json").write_text(damaged)
        for extra in ((), ("--dry-run",)):
            assert sweep.main(sweep_args(*extra)) == 2
            error = capsys.readouterr().err
            assert error.startswith("error: ") and "sweep.json is damaged" in error and error.count("\n") == 1
    (out.parent / "file").write_text("x")
    args = sweep_args()
    args[args.index("--out") + 1] = str(out.parent / "file")
    assert sweep.main(args) == 2 and "is a file" in capsys.readouterr().err
    assert calls() == [] and (out.parent / "file").read_text() == "x"


def test_default_command_is_demo_py_next_to_sweep_py(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, common = sweep.parse_command_line(["--seeds", "0", "--arm", "a="])
    _, baseline, command = sweep.validate(args, common)
    assert baseline == "a"  # the first arm by default
    assert command == [sys.executable, str(sweep.HERE / "demo.py")]
    runs = sweep.plan_runs({"a": ["--x", "1"]}, [3], tmp_path, command, ["--steps", "2"])
    assert runs[0].command[2:] == ["--seed", "3", "--out", str(tmp_path / "a-s3"), "--x", "1", "--steps", "2"]


def test_a_failing_plot_does_not_fail_the_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep.importlib.util, "find_spec", lambda name: object())  # as if matplotlib were there
    (tmp_path / "run").mkdir()  # no config.json: plot.py exits with an error
    sweep.plot_overlay(tmp_path, [tmp_path / "run"])
    assert "plots failed" in capsys.readouterr().out


def test_last_third_of_any_per_step_metric():
    """An extra metric X_last_third that result.json lacks is metrics.jsonl's X over the last third of the steps;
    one that result.json has is taken from there."""
    rows = [{"step": s, "in_band": 0.5, "pseudo_label_accuracy": s / 10} for s in range(6)]  # last third: 4, 5
    values = sweep.run_values({"rung_3_share_last_third": 0.9}, rows,
                              ["pseudo_label_accuracy_last_third", "rung_3_share_last_third", "absent_last_third"])
    assert values == pytest.approx({"in_band_last_third": 0.5, "pseudo_label_accuracy_last_third": 0.45,
                                    "rung_3_share_last_third": 0.9})


def test_a_killed_sweep_stops_its_runs(fake):
    """SIGTERM to the sweep (a kill, a job scheduler) stops the runs it started, as Ctrl-C does: none of them goes
    on to finish in the background, and the next sweep redoes them."""
    sweep_args, calls, out = fake
    release = out.parent / "release"
    args = sweep_args("--jobs", "2")
    args[args.index("--command") + 1] += f" --hold {release}"
    first = subprocess.Popen([sys.executable, str(sweep.HERE / "sweep.py"), *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ((out / "base-s0").exists() and (out / "plus-s0").exists()):
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 130 and "interrupted" in first.stderr.read()
    release.write_text("")  # a run still alive would now finish and write its result
    time.sleep(2)
    assert not (out / "base-s0" / "result.json").exists() and not (out / "plus-s0" / "result.json").exists()
    assert sweep.main(sweep_args()) == 0 and calls().count("base-s0") == 2
