"""The run directory: nothing lost, nothing mixed up. sqlm.py calls this; it knows nothing of the algorithm.

    OUT/config.json      every flag of the run (what --resume compares against)
    OUT/metrics.jsonl    one line per step, appended as the step ends (a crash loses at most that step)
    OUT/samples.jsonl    the step's questions and answers, for reading
    OUT/checkpoint/      model + tokenizer (save_pretrained) and trainer_state.pt: optimizer state, RNG states,
                         step counter: all a run needs to continue exactly as if never stopped
    OUT/.lock            held while a run uses OUT; the kernel drops it when that process ends, however it ends

This module imports no other project file.
"""

import contextlib
import errno
import fcntl
import json
import os
import pickle
import random
import shutil
import signal
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

# ============================================================================ claiming a directory

# What makes a directory a model (from_pretrained reads it) or a checkpoint: weights or a trainer state, or a
# config.json that names a model_type. A run's own config.json names none.
MODEL_FILES = ("*.safetensors", "pytorch_model*.bin", "trainer_state.pt")


@contextlib.contextmanager
def claim(out: Path, config: dict, resume: bool, resumable: set[str]):
    """Take `out` for one run and yield what to resume from: (checkpoint directory, trainer state), or
    (None, None) to start at step 0. Everything is checked before any work starts, and refused in one sentence:
    a path that cannot hold a run, a model directory, a directory another run is using, an existing run without
    --resume, a --resume that would change what the run learns or that has no checkpoint to continue from, a
    damaged checkpoint. Then the logs are cut back to the checkpoint's step and config.json is written. A start
    that fails before its first step is logged leaves nothing behind; what it removes, it removes holding the lock."""
    check_out(out)
    lock, made_out, made_lock = take_lock(out)
    fresh = made_out and [path.name for path in out.iterdir()] == [".lock"]  # then all in it is this start's
    made_config = False
    try:
        checkpoint, state = check_resume(out, config, resume, resumable)
        for log in ("metrics.jsonl", "samples.jsonl"):  # drop the steps the checkpoint does not hold
            truncate_jsonl(out / log, state["step"] if state else 0)
        made_config = not (out / "config.json").exists()
        write_json(out / "config.json", config)
        yield checkpoint, state
    except BaseException:
        if not (out / "metrics.jsonl").exists():  # no step was logged: undo what this start made
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
            for path, made_here in ((out / "config.json", made_config), (out / ".lock", made_lock)):
                if made_here and not fresh:
                    path.unlink(missing_ok=True)
        raise
    finally:
        lock.close()


def cannot_write(out: Path, errno_code: int) -> SystemExit:
    return SystemExit(f"error: cannot write to --out {str(out)!r} ({os.strerror(errno_code)}); choose a writable "
                      "directory.")


def check_out(out: Path) -> None:
    """Refuse, before anything is made, an --out whose path cannot be written, and one that is or is inside a model
    or checkpoint directory (the run's config.json would replace the model's)."""
    try:
        existing = next(path for path in (out, *out.parents) if path.exists())  # a name too long raises here
    except OSError as error:
        raise cannot_write(out, error.errno) from None
    if not existing.is_dir():
        raise cannot_write(out, errno.ENOTDIR)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise cannot_write(out, errno.EACCES)
    real = out.resolve()
    for path in (real, *real.parents):
        if path.is_dir() and is_model_dir(path):
            where = "is a model directory" if path == real else f"is inside the model directory {str(path)!r}"
            raise SystemExit(f"error: --out {str(out)!r} {where}, whose files a run would overwrite; choose another "
                             "--out.")


def is_model_dir(path: Path) -> bool:
    if any(next(path.glob(pattern), None) for pattern in MODEL_FILES):
        return True
    try:
        return "model_type" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):  # no config.json, or not a JSON object: not a model's
        return False


def take_lock(out: Path):
    """Make `out` if needed and hold its lock -> (lock file, whether this call made `out`, whether it made .lock),
    or a one-sentence refusal when another run holds it. mkdir and open('x') decide atomically who made what; and
    the lock counts only if the file locked is still the one at out/.lock (a start that failed may have removed it
    while another waited on it)."""
    for _ in range(3):
        try:
            try:
                out.mkdir(parents=True)
                made_out = True
            except FileExistsError:
                made_out = False
            try:
                lock, made_lock = (out / ".lock").open("x"), True
            except FileExistsError:
                lock, made_lock = (out / ".lock").open("a"), False
        except OSError as error:
            raise cannot_write(out, error.errno) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if this process dies
        except BlockingIOError:
            lock.close()
            raise SystemExit(f"error: another run is using {str(out)!r} right now; wait for it to end or "
                             "choose another --out.") from None
        try:
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(out / ".lock")):
                return lock, made_out, made_lock
        except FileNotFoundError:
            pass
        lock.close()  # the file this call locked was removed: lock the one there now
    raise cannot_write(out, errno.EBUSY)


def check_resume(out: Path, config: dict, resume: bool, resumable: set[str]):
    """(checkpoint, trainer state) to continue from, (None, None) to start at step 0, or a one-sentence refusal."""
    saved = read_run_config(out)
    pieces = sorted(path.name + "/" * path.is_dir() for path in (*out.glob("checkpoint*"), out / "metrics.jsonl",
                                                                 out / "samples.jsonl") if path.exists())
    if saved is None and pieces:  # not a run this can continue; starting one there would overwrite them
        raise SystemExit(f"error: {str(out)!r} holds {', '.join(pieces)} but no run config.json; restore its "
                         "config.json, or choose another --out.")
    if not resume:
        if saved is not None:
            raise SystemExit(f"error: {str(out)!r} already holds a run; pass --resume to continue it, or choose "
                             "another --out.")
        return None, None
    if saved is None:
        raise SystemExit(f"error: --resume found no run in {str(out)!r}; drop --resume to start one there.")
    changed = [f"--{k.replace('_', '-')} ({saved[k]!r} -> {config[k]!r})"
               for k in config if k in saved and k not in resumable and not same_setting(saved[k], config[k])]
    if changed:
        allowed = ", ".join("--" + k.replace("_", "-") for k in sorted(resumable))
        raise SystemExit(f"error: --resume would change {', '.join(changed)}, which makes it a different "
                         f"experiment; resume with the saved values, or start a new --out (only {allowed} may "
                         "change on --resume).")
    checkpoint = find_checkpoint(out)
    if checkpoint is None:
        logged = len(step_lines(out / "metrics.jsonl"))
        if logged:  # starting again would cut them: never without the user's word
            raise SystemExit(f"error: --resume found no checkpoint in {str(out)!r} to continue from, and starting "
                             f"again would cut the {logged} steps its metrics.jsonl holds; to start over and keep "
                             "them, rename that directory and run without --resume, or choose another --out.")
        print(f"note: {out} stopped before its first step; --resume starts it again from step 0.", file=sys.stderr)
        return None, None
    state, problem = read_checkpoint(checkpoint)
    if problem:
        raise SystemExit(f"error: the checkpoint {str(checkpoint)!r} is damaged ({problem}); restore it from a copy "
                         f"you trust, or start over in another --out (this run's logs stay in {str(out)!r}).")
    if state["step"] > config.get("steps", state["step"]):
        raise SystemExit(f"error: the checkpoint in {str(out)!r} already holds {state['step']} steps; pass --steps "
                         f"{state['step']} or more to continue it.")
    return checkpoint, state


def read_run_config(out: Path) -> dict | None:
    """The run's config.json (None if there is none), or a one-sentence refusal when it is not a JSON object."""
    path = out / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        saved = None
    if not isinstance(saved, dict):
        raise SystemExit(f"error: {str(path)!r} is damaged (not a JSON object of flags); restore it or start a new "
                         "--out.")
    return saved


def same_setting(saved, given) -> bool:
    """Equal, or two spellings of one existing path (`runs/m` and `runs/m/`)."""
    if saved == given:
        return True
    paths = isinstance(saved, str) and isinstance(given, str) and saved and given
    return bool(paths) and os.path.exists(saved) and os.path.exists(given) and os.path.samefile(saved, given)


# ============================================================================ checkpoints


def save_checkpoint(directory: Path, policy, tokenizer, trainer_state: dict | None = None) -> None:
    """Weights and tokenizer (save_pretrained), plus trainer_state.pt when given. Written to NAME.tmp and then
    swapped in, so a crash mid-save never loses the previous checkpoint (find_checkpoint also looks at .old).
    A write that fails (a full disk) is one sentence, not the library's error."""
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
    except (OSError, RuntimeError, SafetensorError) as error:  # torch reports a failed write as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(directory, error) from None
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def first_line(error: Exception) -> str:
    """An exception as a few words for a one-sentence message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__


# numpy's RNG state in trainer_state.pt is a numpy array; these are the names its pickle uses, and they only build
# data. torch.load(weights_only=True) allows nothing else, so a file that would run code while loading is refused.
NUMPY_ARRAY = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]
STATE_KEYS = {"step", "optimizer", "rng", "seen_ngrams", "best_validation"}


def load_trainer_state(path: Path) -> dict:
    """trainer_state.pt as data only (tensors, numbers, strings, containers, numpy's RNG array). Raises
    pickle.UnpicklingError for anything else, ValueError for a file that is not a trainer state."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive: this is something else, or cut off
        raise ValueError("not a file torch.save wrote whole")
    with torch.serialization.safe_globals(NUMPY_ARRAY):
        state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or not STATE_KEYS <= state.keys():
        missing = STATE_KEYS - set(state) if isinstance(state, dict) else STATE_KEYS
        raise ValueError("it lacks " + ", ".join(sorted(missing)))
    if type(state["step"]) is not int or state["step"] < 1:  # a checkpoint is saved after a step, never before
        raise ValueError(f"step {state['step']!r} is not a number of steps done")
    return state


def read_checkpoint(checkpoint: Path) -> tuple[dict | None, str | None]:
    """(trainer state, None), or (None, what is wrong) for a checkpoint that cannot be resumed from."""
    try:
        state = load_trainer_state(checkpoint / "trainer_state.pt")
    except pickle.UnpicklingError:
        return None, "trainer_state.pt is not plain data; a checkpoint is loaded as data only, never run as code"
    except Exception as error:  # torch raises many kinds; all mean the same to the user
        return None, f"trainer_state.pt: {first_line(error)}"
    for weights in checkpoint.glob("*.safetensors"):  # reads each header: a cut-off file fails here
        try:
            with safe_open(str(weights), "pt") as file:
                file.keys()
        except Exception as error:
            return None, f"{weights.name}: {first_line(error)}"
    return state, None


def find_checkpoint(out: Path) -> Path | None:
    for candidate in (out / "checkpoint", out / "checkpoint.old"):  # .old survives a crash mid-swap
        if (candidate / "trainer_state.pt").exists():
            return candidate
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def trainer_state(step: int, optimizer, **counters) -> dict:
    """What trainer_state.pt holds besides the weights: the steps done, the optimizer's moments, every RNG state
    (so the next step samples exactly what an unbroken run would), and the loop's own counters."""
    rng = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
               cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    return dict(step=step, optimizer=optimizer.state_dict(), rng=rng, **counters)


def restore(state: dict, optimizer) -> tuple[int, set, float]:
    """Put a trainer_state back: optimizer and RNG states. Returns (steps done, seen n-grams, best validation)."""
    optimizer.load_state_dict(state["optimizer"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"], state["seen_ngrams"], state["best_validation"]


# ============================================================================ logs


def write_json(path: Path, value) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def step_lines(path: Path) -> list[tuple[int, str]]:
    """(step, line) for each line of a log that parses and names its step: a line cut off by a crash does not."""
    rows = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(step, int):
            rows.append((step, line))
    return rows


def truncate_jsonl(path: Path, keep_before_step: int) -> None:
    """On resume, drop the lines of steps the checkpoint does not hold (they will be produced again), and a
    last line cut off by a crash (it does not parse)."""
    if path.exists():
        path.write_text("".join(line + "\n" for step, line in step_lines(path) if step < keep_before_step))


def append_jsonl(path: Path, rows: list[dict]) -> None:
    try:
        with path.open("a") as file:  # closed (so flushed to the OS) every step: a kill loses at most this step
            for row in rows:
                file.write(json.dumps(row) + "\n")
    except OSError as error:
        raise write_failed(path, error) from None


def write_failed(path: Path, error: Exception) -> SystemExit:
    """A write that failed mid-run (a full disk, say): one sentence, and what was written before stays."""
    free = shutil.disk_usage(path.parent).free / 2**20
    return SystemExit(f"error: could not write {str(path)!r} ({first_line(error)}; {free:.0f} MiB free on that "
                      "disk); make room and continue with --resume, which starts from the last checkpoint written.")


# ============================================================================ stopping cleanly


@contextlib.contextmanager
def stop_requests():
    """Yield a function that says whether SIGINT (Ctrl-C) or SIGTERM arrived. The first signal only asks: the
    training loop finishes its step, saves a checkpoint and stops. A second one stops at once (KeyboardInterrupt),
    losing only the unfinished step: the last checkpoint stays as it was."""
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        print("\nstopping after this step (a checkpoint is saved); signal again to stop at once.", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(received)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
