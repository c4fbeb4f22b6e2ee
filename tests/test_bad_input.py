"""Bad input, through the real command lines (sqlm.py, evaluate.py, demo.py): every case is answered before any
work starts, with one sentence and a non-zero exit, and nothing is written or lost. The README's bad-input
paragraph lists these cases."""

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import bench
import demo
import evaluate
import sqlm
import tasks
import tiny
from test_demo import small_cache  # noqa: F401 (a fixture: the demo's stand-in base)

FAST = ["--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "8", "--device", "cpu",
        "--mini-batch-size", "4"]


@pytest.fixture(scope="module")
def finished_run(tiny_dir, tmp_path_factory):
    """A finished 2-step run, copied by the cases that need an existing run directory."""
    out = tmp_path_factory.mktemp("finished") / "run"
    sqlm.main([str(a) for a in ["--model", tiny_dir, "--steps", 2, "--out", out, *FAST]])
    return out


def snapshot(root):
    """Every file under root with its size and modification time: equal snapshots = nothing written or lost."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


def write(path, content):
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def model_copy(tmp, run, change=None):
    """A copy of the finished run's checkpoint as a model directory, its weights file passed through `change`."""
    model = shutil.copytree(run / "checkpoint", tmp / "model")
    if change:
        change(model / "model.safetensors")
    return model


def reshape_first_weight(path):
    weights = load_file(path)
    name = sorted(weights)[0]
    weights[name] = torch.zeros(weights[name].shape[0] + 1, *weights[name].shape[1:])
    save_file(weights, path, metadata={"format": "pt"})


def change_trainer_state(run, **changes):
    path = run / "checkpoint" / "trainer_state.pt"
    torch.save(torch.load(path, weights_only=False) | changes, path)  # the test's own file: trusted


class RunsCode:
    """Unpickling this runs code: it writes the file `marker` (as a crafted checkpoint could do anything)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def holds_a_model(tmp):
    """A directory that is not a run and holds a model in checkpoint/, where a run would write its own."""
    shutil.copytree(tmp / "existing" / "checkpoint", tmp / "d" / "checkpoint")
    (tmp / "d" / "checkpoint" / "trainer_state.pt").unlink()
    return tmp / "d"


def named_pipe(tmp):
    os.mkfifo(tmp / "pipe")  # reading it would wait for a writer forever
    return tmp / "pipe"


# Each case: (name, command, arguments, setup(tmp, run) -> extra placeholders, expected words).
# Placeholders in arguments: {model} (the tiny model), {out} (tmp/run), {run} (a copy of a finished run),
# {file} (what setup wrote). Expected words: a fragment of the one-sentence error, or "usage" for argparse.
CASES = [
    ("save every 0", "sqlm", ["--save-every", "0"], None, "--save-every must be at least 1"),
    ("negative budget", "sqlm", ["--max-new-tokens", "-5"], None, "--max-new-tokens must be at least 0"),
    ("rollout batch 0", "sqlm", ["--rollout-batch-size", "0"], None, "--rollout-batch-size must be at least 1"),
    ("negative lr", "sqlm", ["--lr", "-1"], None, "--lr must be greater than 0"),
    ("lr nan", "sqlm", ["--lr", "nan"], None, "--lr must be a finite number"),
    ("eval every -1", "sqlm", ["--eval-every", "-1"], None, "--eval-every must be at least 0"),
    ("one generation", "sqlm", ["--num-generations", "1"], None, "--num-generations must be at least 2"),
    ("unknown task", "sqlm", ["--task", "poetry"], None, "usage"),
    ("unknown gate", "sqlm", ["--gate", "maybe"], None, "usage"),
    ("bad period", "sqlm", ["--proposer-update-every", "sometimes"], None, "usage"),
    ("truth on algebra", "sqlm", ["--task", "algebra", "--solver-reward", "truth"], None, "needs questions"),
    ("cuda without gpu", "sqlm", ["--device", "cuda"], None, "needs a GPU"),
    ("validation data unused", "sqlm", ["--validation-data", "{file}"],
     lambda tmp, run: write(tmp / "v.jsonl", '{"question": "1 * 2", "answer": "2"}\n'), "only read with"),
    ("validation data missing", "sqlm", ["--eval-every", "1", "--validation-data", "{tmp}/missing.jsonl"], None,
     "cannot read"),
    ("validation data bad line", "sqlm", ["--eval-every", "1", "--validation-data", "{file}"],
     lambda tmp, run: write(tmp / "v.jsonl", '{"question": "1 * 2", "answer": "2"}\n\n{oops\n'), "line 3"),
    ("missing model dir", "sqlm", ["--model", "{tmp}/no/such/model"], None, "is not a model directory"),
    ("empty model dir", "sqlm", ["--model", "{file}"], lambda tmp, run: (tmp / "empty").mkdir() or tmp / "empty",
     "is not a model directory"),
    ("unreachable hub", "sqlm", ["--model", "someorg/somemodel"], None, "the hub cannot be reached"),
    ("out is a file", "sqlm", ["--out", "{file}/run"], lambda tmp, run: write(tmp / "f", "x"), "cannot write"),
    ("existing run", "sqlm", ["--out", "{run}"], None, "already holds a run"),
    ("resume nothing", "sqlm", ["--resume"], None, "found no run"),
    ("resume changes lr", "sqlm", ["--out", "{run}", "--resume", "--lr", "1e-3"], None, "would change --lr"),
    ("resume changes model", "sqlm", ["--out", "{run}", "--resume", "--model", "{file}"],
     lambda tmp, run: shutil.copytree(run / "checkpoint", tmp / "other"), "would change --model"),
    ("resume fewer steps", "sqlm", ["--out", "{run}", "--resume", "--steps", "1"], None, "already holds 2 steps"),
    ("damaged trainer state", "sqlm", ["--out", "{run}", "--resume", "--steps", "3"],
     lambda tmp, run: write(run / "checkpoint" / "trainer_state.pt", "cut"), "is damaged"),
    ("damaged weights", "sqlm", ["--out", "{run}", "--resume", "--steps", "3"],
     lambda tmp, run: write(run / "checkpoint" / "model.safetensors",
                            (run / "checkpoint" / "model.safetensors").read_bytes()[:1000]), "is damaged"),
    ("damaged config", "sqlm", ["--out", "{run}", "--resume"], lambda tmp, run: write(run / "config.json", "{"),
     "config.json' is damaged"),
    ("data not an object", "evaluate", ["--data", "{file}"], lambda tmp, run: write(tmp / "d.jsonl", "[1, 2]\n"),
     "line 1 of"),
    ("data binary", "evaluate", ["--data", "{file}"],
     lambda tmp, run: write(tmp / "d.bin", bytes(range(256))), "not UTF-8 text"),
    ("data empty", "evaluate", ["--data", "{file}"], lambda tmp, run: write(tmp / "d.jsonl", "\n"), "no problems"),
    ("data answer not a number", "evaluate", ["--data", "{file}"],
     lambda tmp, run: write(tmp / "d.jsonl", '{"question": "q", "answer": "seven"}\n'), "is not a number"),
    ("coding tests without output", "evaluate-coding", ["--data", "{file}"],
     lambda tmp, run: write(tmp / "c.jsonl", '{"problem": "p", "tests": [{"input": "1"}]}\n'), "every test needs"),
    ("coding tests a string", "evaluate-coding", ["--data", "{file}"],
     lambda tmp, run: write(tmp / "c.jsonl", '{"problem": "p", "tests": "1 ||| 1"}\n'), "non-empty list"),
    ("coding no tests", "evaluate-coding", ["--data", "{file}"],
     lambda tmp, run: write(tmp / "c.jsonl", '{"problem": "p", "tests": []}\n'), "non-empty list"),
    ("limit 0", "evaluate", ["--limit", "0"], None, "usage"),
    ("limit -1", "evaluate", ["--limit", "-1"], None, "usage"),
    ("evaluate empty model dir", "evaluate", ["--model", "{file}"],
     lambda tmp, run: (tmp / "empty").mkdir() or tmp / "empty", "is not a model directory"),
    ("demo bad seed", "demo", ["--seed", "x"], None, "usage"),
    ("demo unknown flag", "demo", ["--bogus", "1"], None, "usage"),
    ("demo unknown setting", "demo", ["--setting", "hard"], None, "usage"),
    ("demo bad sqlm flag", "demo", ["--lr", "-1"], None, "--lr must be greater than 0"),
    ("demo existing run", "demo", ["--out", "{run}"], None, "already holds a run"),
    ("demo styles without run", "demo-styles", ["--out", "{tmp}/nowhere"], None, "usage"),
    # Issue 21: each of these lost data, ran on, or stopped with a traceback before.
    ("seed -1", "sqlm", ["--seed", "-1"], None, "--seed must be at least 0"),
    ("seed past numpy's range", "sqlm", ["--seed", "4294967296"], None, "--seed must be at most 4294967295"),
    ("huge budget", "sqlm", ["--max-new-tokens", "1000000000000"], None, "--max-new-tokens must be at most 131072"),
    ("evaluate huge budget", "evaluate", ["--max-new-tokens", "1000000000000"], None, "usage"),
    ("out empty", "sqlm", ["--out", ""], None, "--out must not be empty"),
    ("out name too long", "sqlm", ["--out", "{tmp}/" + "x" * 300], None, "File name too long"),
    ("out is a checkpoint", "sqlm", ["--out", "{run}/checkpoint", "--resume"], None, "is a model directory"),
    ("out inside a checkpoint", "sqlm", ["--out", "{run}/checkpoint/sub"], None, "is inside the model directory"),
    ("out is the model", "sqlm", ["--model", "{file}", "--out", "{file}", "--resume"], model_copy,
     "is a model directory"),
    ("out holds a model", "sqlm", ["--out", "{file}"], lambda tmp, run: holds_a_model(tmp), "holds checkpoint/ but"),
    ("resume without checkpoint", "sqlm", ["--out", "{run}", "--resume", "--steps", "3"],
     lambda tmp, run: shutil.rmtree(run / "checkpoint"), "found no checkpoint"),
    ("config not an object", "sqlm", ["--out", "{run}", "--resume", "--steps", "3"],
     lambda tmp, run: write(run / "config.json", "[1]"), "config.json' is damaged"),
    ("checkpoint step -5", "sqlm", ["--out", "{run}", "--resume", "--steps", "3"],
     lambda tmp, run: change_trainer_state(run, step=-5), "step -5 is not"),
    ("checkpoint that runs code", "sqlm", ["--out", "{run}", "--resume", "--steps", "3"],
     lambda tmp, run: change_trainer_state(run, best_validation=RunsCode(tmp / "code_ran")), "never run as code"),
    ("truncated weights", "sqlm", ["--model", "{file}"],
     lambda tmp, run: model_copy(tmp, run, lambda path: write(path, path.read_bytes()[:1000])), "could not load"),
    ("weights of another shape", "evaluate", ["--model", "{file}"],
     lambda tmp, run: model_copy(tmp, run, reshape_first_weight), "other shapes than its config.json"),
    ("validation data a named pipe", "sqlm", ["--eval-every", "1", "--validation-data", "{file}"],
     lambda tmp, run: named_pipe(tmp), "not a regular file"),
    ("data a named pipe", "evaluate", ["--data", "{file}"], lambda tmp, run: named_pipe(tmp), "not a regular file"),
    ("data answer too long", "evaluate", ["--data", "{file}"],
     lambda tmp, run: write(tmp / "d.jsonl", '{"question": "q", "answer": 1' + "0" * 5000 + "}\n"),
     "a number longer than Python reads"),
    ("bench batch 0", "bench", ["--batch", "0"], None, "--batch must be at least 1"),
    ("bench new tokens -1", "bench", ["--new-tokens", "-1"], None, "--new-tokens must be at least 1"),
    ("bench device tpu", "bench", ["--device", "tpu"], None, "usage"),
    ("tiny unknown recipe", "tiny", ["hard"], None, "usage"),
    ("demo out under a file", "demo", ["--out", "{file}/sub"], lambda tmp, run: write(tmp / "f", "x"), "cannot write"),
]


def command_line(command, args, tiny_dir, out):
    if command == "sqlm":
        return sqlm.main, ["--model", str(tiny_dir), "--steps", "2", "--out", str(out), *FAST, *args]
    if command.startswith("evaluate"):
        task = "coding" if command == "evaluate-coding" else "multiplication"
        return evaluate.main, ["--task", task, "--model", str(tiny_dir), "--device", "cpu", *args]
    if command == "demo-styles":
        return demo.main, ["styles", *args]
    if command == "bench":
        return bench.main, ["--model", str(tiny_dir), "--device", "cpu", *args]
    if command == "tiny":
        return tiny.main, args
    return demo.main, ["--out", str(out), *args]


@pytest.mark.parametrize("name, command, args, setup, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_sentence_and_changes_nothing(name, command, args, setup, expected, tiny_dir,
                                                       finished_run, tmp_path, capsys, monkeypatch, small_cache):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a hub that refuses at once, on this machine only
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)  # so that a run written into the current directory would show in the snapshot

    def work(*args, **kwargs):
        raise AssertionError("work started before the bad input was refused")

    monkeypatch.setattr(tiny, "load_or_build_tiny_base", work)  # the demo's minutes of building and measuring
    monkeypatch.setattr(demo, "heldout_correct", work)
    run = tmp_path / "existing"
    shutil.copytree(finished_run, run)
    made = setup(tmp_path, run) if setup else None
    values = dict(tmp=tmp_path, run=run, file=made, out=tmp_path / "run")
    main, argv = command_line(command, [arg.format(**values) for arg in args], tiny_dir, tmp_path / "run")
    before = snapshot(tmp_path)
    started = time.time()
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert time.time() - started < 20  # answered before any work (each case takes seconds at most)
    if expected == "usage":  # argparse: exit status 2, usage and one error line on stderr
        assert error.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].count("error:") == 1
    else:
        message = str(error.value.code)
        assert message.startswith("error: ") and expected in message and "\n" not in message, message
    assert snapshot(tmp_path) == before  # nothing written, nothing lost
    assert not (tmp_path / "run").exists()


def test_a_second_run_on_a_busy_out_is_refused(tiny_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with (out / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a running sqlm.py holds it
        with pytest.raises(SystemExit, match="another run is using"):
            sqlm.main(["--model", str(tiny_dir), "--steps", "1", "--out", str(out), *FAST])
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_the_command_line_exits_non_zero_with_one_line(tiny_dir, tmp_path):
    """The same through a real process: exit status 1 and a single line on stderr, for each entry point."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for script, args in (("sqlm.py", ["--model", str(tiny_dir), "--lr", "-1"]),
                         ("evaluate.py", ["--task", "multiplication", "--model", str(tiny_dir), "--data",
                                          str(write(tmp_path / "d.jsonl", "[1]\n"))])):
        result = subprocess.run([sys.executable, os.path.join(root, script), *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
        assert result.stderr.startswith("error: ")


def test_bounds_and_help_that_used_to_fail(capsys):
    """evaluate.py's --max-new-tokens has sqlm.py's bound; `tiny.py --help` prints its usage (it was a KeyError)."""
    field = next(f for f in dataclasses.fields(sqlm.Config) if f.name == "max_new_tokens")
    assert tasks.MAX_NEW_TOKENS == field.metadata["maximum"]
    with pytest.raises(SystemExit) as error:
        tiny.main(["--help"])
    assert error.value.code == 0 and capsys.readouterr().out.startswith("usage: ")


def test_an_unreadable_weights_file_is_named_as_unreadable(tiny_dir, tmp_path):
    """The library reports a weights file it may not read as missing ("No such file or directory")."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("root reads any file, and setpriv (to drop that power) is not installed")
    model = shutil.copytree(tiny_dir, tmp_path / "model")
    (model / "model.safetensors").chmod(0)
    as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([*as_user, sys.executable, os.path.join(root, "evaluate.py"), "--task", "multiplication",
                             "--model", str(model), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: cannot read") and "(Permission denied)" in result.stderr
