"""Run directories survive what happens to real runs: Ctrl-C and SIGTERM, a kill before the first checkpoint, a
crash mid-line in metrics.jsonl, and --resume with flags that may (or may not) change."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
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
    state = rundir.load_trainer_state(out / "checkpoint" / "trainer_state.pt")
    assert state["step"] == len(done) and done == list(range(len(done)))  # the checkpoint holds every logged step
    # ... and the run goes on from there.
    subprocess.run([*args, "--steps", str(len(done) + 1), "--resume"], check=True, capture_output=True, timeout=120)
    assert steps_logged(out) == list(range(len(done) + 1))


def test_resume_without_a_checkpoint_refuses_and_keeps_the_logs(tiny_dir, tmp_path):
    """Killed before its first checkpoint, with steps logged: --resume has nothing to continue from, and starting
    again would cut metrics.jsonl, so it is refused, saying how to start over and keep them; nothing changes.
    Killed before its first logged step (nothing to lose), --resume starts it again instead of being stuck."""
    out = tmp_path / "run"
    args = ["--model", str(tiny_dir), "--steps", "2", "--out", str(out), *FAST]
    sqlm.main(args)
    shutil.rmtree(out / "checkpoint")
    logs = {name: (out / name).read_text() for name in ("metrics.jsonl", "samples.jsonl", "config.json")}
    with pytest.raises(SystemExit, match="already holds a run"):
        sqlm.main(args)
    with pytest.raises(SystemExit, match="found no checkpoint .* cut the 2 steps .* rename that directory"):
        sqlm.main([*args, "--resume"])
    assert {name: (out / name).read_text() for name in logs} == logs and steps_logged(out) == [0, 1]
    (out / "metrics.jsonl").unlink()  # as if killed before its first step was logged
    sqlm.main([*args, "--resume"])
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
    # ... and a path spelled another way (a trailing slash) is the same --model
    sqlm.main(["--model", str(tiny_dir) + "/", "--steps", "2", "--out", str(out), *FAST, "--resume", "--save-every",
               "5", "--samples-per-step", "1"])
    assert json.loads((out / "config.json").read_text())["save_every"] == 5 and steps_logged(out) == [0, 1]
    assert {"steps", "save_every", "device", "rollout_batch_size"} <= sqlm.RESUMABLE
    assert not {"lr", "model", "beta", "seed", "task", "num_generations"} & sqlm.RESUMABLE


def test_truncate_jsonl_keeps_earlier_steps_only(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\nnot json\n{"step": 2}\n{"no step": 1}\n{"step": 1')
    rundir.truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'


def test_two_starts_at_the_same_instant_never_undo_each_other(tmp_path, monkeypatch):
    """Two starts on one new --out, both past their first look at it before either makes it (a barrier holds each
    at its mkdir). Exactly one claims it; the other is refused and removes nothing, so the winner's run is intact
    while it holds it."""
    out = tmp_path / "run"
    at_mkdir, real_mkdir, waited = threading.Barrier(2, timeout=10), pathlib.Path.mkdir, set()

    def mkdir(self, *args, **kwargs):
        if self == out and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            at_mkdir.wait()
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    results, done = {}, {name: threading.Event() for name in ("a", "b")}

    def start(name):
        other = "b" if name == "a" else "a"
        try:
            with rundir.claim(out, {"name": name}, False, set()):
                done[other].wait(timeout=10)  # hold the run until the other start has finished
                results[name] = json.loads((out / "config.json").read_text())
        except SystemExit as error:
            results[name] = str(error)
        except Exception as error:  # the bug: FileNotFoundError once the loser had removed the winner's directory
            results[name] = repr(error)
        finally:
            done[name].set()

    threads = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [name for name in results if results[name] == {"name": name}]
    assert len(winners) == 1, results
    loser = "b" if winners == ["a"] else "a"
    assert "another run is using" in results[loser], results
    assert json.loads((out / "config.json").read_text()) == {"name": winners[0]}


def test_a_full_disk_is_one_sentence_and_loses_nothing(tiny_dir, tmp_path):
    """A checkpoint write that fails (here: a file-size limit, so that writing the weights fails as on a full disk)
    stops the run with one sentence; the logged steps and the previous checkpoint stay, and --resume goes on."""
    out = tmp_path / "run"
    args = ["--model", str(tiny_dir), "--out", str(out), *FAST]
    sqlm.main([*args, "--steps", "1"])
    limited = ("import resource, signal, sys; sys.path.insert(0, sys.argv.pop(1)); import sqlm; "
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # a write past the limit fails (EFBIG), no kill
               "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); sqlm.main(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", limited, ROOT, *args, "--steps", "2", "--resume"],
                            capture_output=True, text=True, timeout=300)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("error: could not write") and "--resume" in last, last
    assert steps_logged(out) == [0, 1] and not (out / "checkpoint.tmp").exists()
    assert rundir.load_trainer_state(out / "checkpoint" / "trainer_state.pt")["step"] == 1
    sqlm.main([*args, "--steps", "2", "--resume"])
    assert steps_logged(out) == [0, 1]
