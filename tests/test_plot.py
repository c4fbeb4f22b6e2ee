"""plot.py: run labels from differing flags, and real PNG files when matplotlib is installed."""

import json

import pytest

import plot


def test_labels_name_only_the_flags_that_differ():
    base = {"task": "multiplication", "lr": 1e-6, "seed": 0, "out": "a", "proposer_update_every": 5}
    configs = [base, {**base, "seed": 1, "out": "b"}, {**base, "proposer_update_every": 0, "out": "c"}]
    assert plot.run_labels(configs) == ["proposer-update-every=5", "proposer-update-every=5",
                                        "proposer-update-every=0"]
    assert plot.run_labels([base, {**base, "seed": 3}]) == ["run", "run"]  # seeds alone: one group


def test_validation_accuracy_sits_after_its_step():
    metrics = [{"step": 0, "validation_accuracy_initial": 0.4, "solver_reward": 0.5},
               {"step": 1, "validation_accuracy": 0.5, "solver_reward": 0.7}]
    assert plot.series(metrics, "validation_accuracy") == ([0, 2], [0.4, 0.5])
    assert plot.series(metrics, "solver_reward") == ([0, 1], [0.5, 0.7])
    assert plot.smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    assert plot.mean_over_seeds([([0, 1, 2], [1.0, 2.0, 3.0]), ([0, 1], [3.0, 4.0])]) == ([0, 1], [2.0, 3.0])


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    for seed, name in enumerate(["a", "b"]):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"seed": seed, "gate": name}))
        rows = [{"step": s, "proposer_reward": 0.5, "solver_reward": 0.1 * s, "valid_fraction": 1.0,
                 "in_band": 0.3, "too_easy": 0.3, "too_hard": 0.4, "novelty": 1.0} for s in range(4)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "overlay")])
    for name in ["overlay_training.png", "overlay_curriculum.png"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_run_is_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="not a run directory"):
        plot.main([str(tmp_path / "nowhere")])

