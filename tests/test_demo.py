"""demo.py: the CPU demo end to end on a small stand-in base, and its reports (base, styles)."""

import json
from pathlib import Path

import pytest

import demo
import sampler
import tiny

TINY_SIZES = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


@pytest.fixture()
def small_cache(tmp_path_factory, monkeypatch):
    """A sqlm cache holding a stand-in for the tiny base: the real recipe, 2 pretraining steps, tiny sizes, and
    short held-out files (16 test, 8 validation problems), so that scoring it takes seconds."""
    cache = tmp_path_factory.getbasetemp() / "demo_cache"
    base = cache / tiny.UNIFORM.cache_name
    if not base.exists():
        tiny.pretrain_tiny_base(base, max_steps=2, eval_every=1, batch_size=8, log=lambda line: None, **TINY_SIZES)
        for name, problems in (("test.jsonl", tiny.heldout_problems()[:16]), ("validation.jsonl",
                                                                            tiny.validation_problems()[:8])):
            lines = [json.dumps({"question": q, "answer": str(a)}) + "\n" for q, a in problems]
            (base / name).write_text("".join(lines))
    monkeypatch.setenv("SQLM_CACHE", str(cache))
    return cache


def test_demo_runs_end_to_end_and_writes_its_result(small_cache, tmp_path, capsys):
    out = tmp_path / "run"
    demo.main(["--seed", "0", "--out", str(out), "--steps", "1", "--batch-size", "1", "--num-generations", "2",
               "--eval-every", "1", "--eval-limit", "4", "--max-new-tokens", "8"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads((out / "result.json").read_text())
    assert printed["heldout_problems"] == 16 and printed["seed"] == 0 and printed["setting"] == "uniform"
    # Per rung (2- and 3-digit multiplicands here): accuracies, and what the proposer asked in the last third.
    assert {"rung_2_accuracy_before", "rung_3_accuracy_after", "rung_1_share_last_third"} <= set(printed)
    shares = [printed[f"rung_{rung}_share_last_third"] for rung in (1, 2, 3)]
    assert shares == [None] * 3 or sum(shares) <= 1.0
    assert 0 < printed["cpu_seconds"]
    for key in ("accuracy_before", "accuracy_after", "accuracy_best_by_validation"):
        assert 0.0 <= printed[key] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["validation_data"].endswith("validation.jsonl") and config["steps"] == 1  # extra flags win
    with pytest.raises(SystemExit, match="already holds a run"):  # refused before the minute of measuring
        demo.main(["--out", str(out)])
    # `demo.py overlap`: the held-out problems split into asked / never asked, base and final scored on each.
    overlap = demo.heldout_overlap(str(out))
    assert overlap["heldout_asked"] + overlap["heldout_never_asked"] == 16
    parts = ("never_asked_before", "never_asked_after", "asked_before", "asked_after")
    assert all(overlap[key] is None or 0.0 <= overlap[key] <= 1.0 for key in parts)
    assert overlap["never_asked_before"] is not None  # one question a step cannot have asked all 16


def test_base_report_counts_votes_at_the_asked_temperature(small_cache):
    report = demo.base_report(votes=2, temperature=0.5)
    assert "majority_of_2_accuracy" in report
    for key in ("greedy_accuracy", "sample_accuracy", "proposer_paid_share", "proposal_well_formed"):
        assert 0.0 <= report[key] <= 1.0, key
    assert len(report["proposal_examples"]) == 8
    # The vote's strength per rung: the shares of k = 0..2 sum to 1, and the per-k majority accuracies are
    # consistent with the rung's majority accuracy (their share-weighted mean).
    for rung in ("rung_2", "rung_3"):
        strength = report[rung]["by_majority_count"]
        assert set(strength) <= {0, 1, 2} and sum(v["share"] for v in strength.values()) == pytest.approx(1, abs=2e-3)
        weighted = sum(v["share"] * v["majority_accuracy"] for v in strength.values())
        assert weighted == pytest.approx(report[rung]["majority_of_2_accuracy"], abs=5e-3)


def test_style_report_counts_worked_answers_per_window(tmp_path):
    """`python demo.py styles --out RUN`: share of worked answers, and how often each style was right."""
    quick = tiny.solver_completion("372 * 8", 2976, worked=False)
    worked = tiny.solver_completion("372 * 8", 2976, worked=True)
    assert not tiny.is_worked(quick) and tiny.is_worked(worked)
    rows = [
        # step 0: one quick answer (wrong), one worked answer (right)
        {"step": 0, "completions": [quick, worked], "answers": ["2977", "2976"], "truth": "2976"},
        # step 1: two worked answers, one right
        {"step": 1, "completions": [worked, worked], "answers": ["2976", "1"], "truth": "2976"},
        # step 2: a second window, quick only
        {"step": 2, "completions": [quick], "answers": ["2976"], "truth": "2976"},
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert demo.style_report(tmp_path, window=2) == [
        {"steps": "0-1", "answers": 4, "worked_share": 0.75, "worked_right": round(2 / 3, 3), "quick_right": 0.0},
        {"steps": "2-3", "answers": 1, "worked_share": 0.0, "worked_right": None, "quick_right": 1.0},
    ]


def test_asked_rungs_reads_the_last_third_of_the_steps(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"steps": 6}))
    rows = [(0, "372 * 8"), (3, "7 * 8"), (4, "37 * 8"), (5, "372 * 8"), (5, "123 * 4")]  # steps 4, 5: the last third
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps({"step": s, "question": q}) + "\n" for s, q in rows))
    assert demo.asked_rungs(str(tmp_path)) == {"rung_1_share_last_third": 0.0, "rung_2_share_last_third": 0.3333,
                                               "rung_3_share_last_third": 0.6667, "question_digits_last_third": 3.6667}


LADDER_BASE = sampler.cache_dir() / tiny.LADDER.cache_name


@pytest.mark.skipif(not (LADDER_BASE / "config.json").exists(),
                    reason="the ladder demo model is not built (python tiny.py ladder; .ci/run builds it)")
def test_readme_trace_is_the_command_output():
    """The README's 'One step in numbers' block is what `python demo.py trace --seed 0` prints, to the digit."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- trace:begin -->\n```text\n", 1)[1].split("\n```\n<!-- trace:end -->", 1)[0]
    assert demo.trace(seed=0) == block


@pytest.mark.skipif(not (LADDER_BASE / "config.json").exists(),
                    reason="the ladder demo model is not built (python tiny.py ladder; .ci/run builds it)")
def test_the_cpu_demo_never_warns_that_it_cannot_learn(tmp_path, capsys):
    """The demo's model writes the answer format and splits its votes: every step has solver groups with signal,
    so the no-signal warning stays silent (3 steps of the ladder demo's own flags)."""
    out = tmp_path / "run"
    demo.sqlm.main(["--model", str(LADDER_BASE), "--out", str(out), *demo.DEMO_FLAGS, *demo.SETTING_FLAGS["ladder"],
                    "--steps", "3", "--eval-every", "0"])
    printed = capsys.readouterr()
    assert "warning:" not in printed.out + printed.err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["solver_groups_with_signal"] > 0 for m in metrics)
