"""Tests for sandbox_report.py: a few of its cheapest hostile cases against ./sandbox.py (each in a real trainer
process, as the report runs them), and its markdown tables on hand-made results."""

import pytest

import sandbox
import sandbox_report
from sandbox_report import AS_OUTSIDE, BOUNDED, CONTAINED, NOT_CONTAINED, Outcome, SpeedSamples


@pytest.fixture
def trainer():
    """A trainer for the current sandbox.py, as this user; the cases below need the namespaces mode."""
    if sandbox.isolation() != sandbox.NAMESPACES:
        pytest.skip(sandbox.isolation())
    return sandbox_report.own_trainer("current", sandbox_report.DEFAULT_SANDBOX)


@pytest.mark.parametrize("case", [sandbox_report.case_environ, sandbox_report.case_tcp,
                                  sandbox_report.case_devices, sandbox_report.case_read_file,
                                  sandbox_report.case_unix_socket_in_var_tmp])
def test_cheap_hostile_cases_are_reported_contained(trainer, case):
    outcome = sandbox_report.run_case(case, trainer)
    assert outcome.verdict == CONTAINED, outcome
    assert outcome.seconds is not None and outcome.seconds < 5
    assert trainer.mode == sandbox.NAMESPACES         # the trainer process itself ran with namespaces


def test_a_known_gap_is_reported_not_contained(trainer):
    """The report must not call everything contained: memory is capped per process, not per run."""
    outcome = sandbox_report.run_case(sandbox_report.case_memory_in_children, trainer)
    assert (outcome.verdict, outcome.detail) == (NOT_CONTAINED, "held 768 MiB in all")


@pytest.mark.parametrize("case", [sandbox_report.case_self_signal, sandbox_report.case_exact_output])
def test_correct_programs_are_reported_as_outside(trainer, case):
    outcome = sandbox_report.run_case(case, trainer)
    assert outcome.verdict == AS_OUTSIDE, outcome


def test_hostile_table_rows():
    results = {
        ("kills the trainer", "root", "old"): Outcome(NOT_CONTAINED, "trainer SIGKILLed", None),
        ("kills the trainer", "root", "current"): Outcome(CONTAINED, "trainer exit status 0", 0.083),
        ("kills the trainer", "nobody", "old"): Outcome(NOT_CONTAINED, "trainer SIGKILLed", None),
        ("kills the trainer", "nobody", "current"): Outcome(CONTAINED, "trainer exit status 0", 0.031),
        ("forks 500 children", "root", "old"): Outcome(NOT_CONTAINED, "500 forked", 1.2),
        ("forks 500 children", "root", "current"): Outcome(BOUNDED, "fork refused after 299", 0.5),
        ("forks 500 children", "nobody", "old"): Outcome(NOT_CONTAINED, "500 forked", 1.0),
        ("forks 500 children", "nobody", "current"): Outcome(BOUNDED, "fork refused after 299", 0.456),
    }
    lines = sandbox_report.hostile_table(results, ["kills the trainer", "forks 500 children"], ["root", "nobody"],
                                         ["old", "current"])
    assert lines == [
        "| hostile program | trainer | old | time | current | time |",
        "|---|---|---|---|---|---|",
        "| kills the trainer | root | **not contained** (trainer SIGKILLed) | - | contained (trainer exit status 0) "
        "| 0.08 s |",
        "| kills the trainer | nobody | **not contained** (trainer SIGKILLed) | - | contained (trainer exit status 0) "
        "| 0.03 s |",
        "| forks 500 children | root | **not contained** (500 forked) | 1.20 s | bounded (fork refused after 299) "
        "| 0.50 s |",
        "| forks 500 children | nobody | **not contained** (500 forked) | 1.00 s | bounded (fork refused after 299) "
        "| 0.46 s |",
    ]


def test_speed_table_and_ratios():
    samples = {
        "old": SpeedSamples([20.0, 22.0, 30.0], [80.0, 76.0, 90.0]),
        "current": SpeedSamples([24.0, 20.0, 26.0], [60.0, 66.0, 57.0]),
        "current, limits only (forced)": SpeedSamples([30.0, 32.0, 28.0], [50.0, 48.0, 40.0]),
    }
    modes = {"old": "limits only", "current": "namespaces", "current, limits only (forced)": "limits only: forced"}
    assert sandbox_report.speed_table(samples, modes) == [
        "| sandbox | isolation | programs/s, median (min-max) | ms per run alone, median (min-max) |",
        "|---|---|---|---|",
        "| old | limits only | 22.0 (20.0-30.0) | 80 (76-90) |",
        "| current | namespaces | 24.0 (20.0-26.0) | 60 (57-66) |",
        "| current, limits only (forced) | limits only: forced | 30.0 (28.0-32.0) | 48 (40-50) |",
    ]
    assert sandbox_report.ratio_lines(samples) == [
        "- current / old: 1.09x programs/s, 0.75x ms per run alone (medians)",
        "- current / current, limits only (forced): 0.80x programs/s, 1.25x ms per run alone (medians)",
    ]
