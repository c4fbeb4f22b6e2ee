"""Run directories survive what happens to real runs: Ctrl-C and SIGTERM, a kill before the first checkpoint, a
crash mid-line in metrics.jsonl, and --resume with flags that may (or may not) change."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import rundir
import sqlm

FAST = ["--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "8", "--device", "cpu",
        "--mini-batch-size", "4"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steps_logged(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_and_saves_a_checkpoint(tiny_dir, tmp_path, signum):
    out = tmp_path / "run"
    args = [sys.executable, os.path.join(ROOT, "sqlm.py"), "--model", str(tiny_dir), "--out", str(out),
            "--save-every", "1000", *FAST]
    process = subprocess.Popen([*args, "--steps", "1000"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signum)  # mid-run: 1000 steps, checkpoints only every 1000
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 1 and "stopped after step" in stderr.strip().splitlines()[-1]
    done = steps_logged(out)
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == len(done) and done == list(range(len(done)))  # the checkpoint holds every logged step
    # ... and the run goes on from there.
    subprocess.run([*args, "--steps", str(len(done) + 1), "--resume"], check=True, capture_output=True, timeout=120)
    assert steps_logged(out) == list(range(len(done) + 1))


def test_resume_before_any_checkpoint_starts_again(tiny_dir, tmp_path):
    """Killed before its first checkpoint: without --resume the run is refused (it exists), with --resume it
    starts again from step 0 (there is nothing to continue from), instead of being stuck."""
    out = tmp_path / "run"
    sqlm.main(["--model", str(tiny_dir), "--steps", "2", "--out", str(out), *FAST])
    for name in ("checkpoint",):
        for path in sorted((out / name).iterdir()):
            path.unlink()
        (out / name).rmdir()
    with pytest.raises(SystemExit, match="already holds a run"):
        sqlm.main(["--model", str(tiny_dir), "--steps", "2", "--out", str(out), *FAST])
    sqlm.main(["--model", str(tiny_dir), "--steps", "2", "--out", str(out), *FAST, "--resume"])
    assert steps_logged(out) == [0, 1] and (out / "checkpoint" / "trainer_state.pt").exists()


def test_a_line_cut_off_by_a_crash_is_dropped_on_resume(tiny_dir, tmp_path):
    out = tmp_path / "run"
    sqlm.main(["--model", str(tiny_dir), "--steps", "1", "--out", str(out), *FAST])
    with (out / "metrics.jsonl").open("a") as file:
        file.write('{"step": 1, "proposer_rew')  # the crash came mid-write
    sqlm.main(["--model", str(tiny_dir), "--steps", "2", "--out", str(out), *FAST, "--resume"])
    assert steps_logged(out) == [0, 1]


def test_resume_may_change_only_the_flags_that_do_not_change_what_is_learned(tiny_dir, tmp_path):
    out = tmp_path / "run"
    sqlm.main(["--model", str(tiny_dir), "--steps", "1", "--out", str(out), *FAST])
    before = (out / "config.json").read_text()
    with pytest.raises(SystemExit, match="would change --beta"):
        sqlm.main(["--model", str(tiny_dir), "--steps", "2", "--out", str(out), *FAST, "--resume", "--beta", "0"])
    assert (out / "config.json").read_text() == before
    sqlm.main(["--model", str(tiny_dir), "--steps", "2", "--out", str(out), *FAST, "--resume", "--save-every", "5",
               "--samples-per-step", "1"])
    assert json.loads((out / "config.json").read_text())["save_every"] == 5 and steps_logged(out) == [0, 1]
    assert {"steps", "save_every", "device", "rollout_batch_size"} <= sqlm.RESUMABLE
    assert not {"lr", "model", "beta", "seed", "task", "num_generations"} & sqlm.RESUMABLE


def test_truncate_jsonl_keeps_earlier_steps_only(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\nnot json\n{"step": 2}\n{"no step": 1}\n{"step": 1')
    rundir.truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'
