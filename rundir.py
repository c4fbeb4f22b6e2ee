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
import fcntl
import json
import random
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

# ============================================================================ claiming a directory


@contextlib.contextmanager
def claim(out: Path, config: dict, resume: bool, resumable: set[str]):
    """Take `out` for one run and yield what to resume from: (checkpoint directory, trainer state), or
    (None, None) to start at step 0. Everything is checked before any work starts, and refused in one sentence:
    a directory another run is using, an existing run without --resume, a --resume that would change what the
    run learns, a damaged checkpoint. Then the logs are cut back to the checkpoint's step and config.json is
    written. A start that fails before its first step is logged leaves nothing behind."""
    created, lock_path, config_created = not out.exists(), out / ".lock", False
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock_created = not lock_path.exists()
        lock = lock_path.open("a")
    except OSError as error:
        raise SystemExit(f"error: cannot write to --out {str(out)!r} ({error.strerror}); "
                         "choose a writable directory.") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if this process dies
        except BlockingIOError:
            raise SystemExit(f"error: another run is using {str(out)!r} right now; wait for it to end or "
                             "choose another --out.") from None
        checkpoint, state = check_resume(out, config, resume, resumable)
        for log in ("metrics.jsonl", "samples.jsonl"):  # drop the steps the checkpoint does not hold
            truncate_jsonl(out / log, state["step"] if state else 0)
        config_created = not (out / "config.json").exists()
        write_json(out / "config.json", config)
        yield checkpoint, state
    except BaseException:
        if not (out / "metrics.jsonl").exists():  # no step was logged: undo what this start made
            if created:
                shutil.rmtree(out, ignore_errors=True)
            for path, made_here in ((out / "config.json", config_created), (lock_path, lock_created)):
                if made_here and not created:
                    path.unlink(missing_ok=True)
        raise
    finally:
        lock.close()


def check_resume(out: Path, config: dict, resume: bool, resumable: set[str]):
    """(checkpoint, trainer state) to continue from, (None, None) to start at step 0, or a one-sentence refusal."""
    try:
        saved = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SystemExit(f"error: {str(out / 'config.json')!r} is damaged; restore it or start a new --out.") from None
    checkpoint = find_checkpoint(out)
    if not resume:
        if saved is not None or checkpoint is not None or (out / "metrics.jsonl").exists():
            raise SystemExit(f"error: {str(out)!r} already holds a run; pass --resume to continue it, or choose "
                             "another --out.")
        return None, None
    if saved is None and checkpoint is None:
        raise SystemExit(f"error: --resume found no run in {str(out)!r}; drop --resume to start one there.")
    changed = [f"--{k.replace('_', '-')} ({saved[k]!r} -> {config[k]!r})"
               for k in config if saved and k in saved and k not in resumable and saved[k] != config[k]]
    if changed:
        allowed = ", ".join("--" + k.replace("_", "-") for k in sorted(resumable))
        raise SystemExit(f"error: --resume would change {', '.join(changed)}, which makes it a different "
                         f"experiment; resume with the saved values, or start a new --out (only {allowed} may "
                         "change on --resume).")
    if checkpoint is None:  # it stopped before its first checkpoint: continuing it means starting it again
        print(f"note: {out} has no checkpoint yet; --resume starts the run again from step 0.", file=sys.stderr)
        return None, None
    try:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        for weights in checkpoint.glob("*.safetensors"):  # reads each header: a cut-off file fails here
            with safe_open(str(weights), "pt") as file:
                file.keys()
    except Exception as error:  # torch and safetensors raise many kinds; all mean the same to the user
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise SystemExit(f"error: the checkpoint {str(checkpoint)!r} is damaged ({reason}); delete that directory "
                         "and pass --resume again to restart the run from an older checkpoint or step 0, or start "
                         "a new --out.") from None
    if state["step"] > config.get("steps", state["step"]):
        raise SystemExit(f"error: the checkpoint in {str(out)!r} already holds {state['step']} steps; pass --steps "
                         f"{state['step']} or more to continue it.")
    return checkpoint, state


# ============================================================================ checkpoints


def save_checkpoint(directory: Path, policy, tokenizer, trainer_state: dict | None = None) -> None:
    """Weights and tokenizer (save_pretrained), plus trainer_state.pt when given. Written to NAME.tmp and then
    swapped in, so a crash mid-save never loses the previous checkpoint (find_checkpoint also looks at .old)."""
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


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


def truncate_jsonl(path: Path, keep_before_step: int) -> None:
    """On resume, drop the lines of steps the checkpoint does not hold (they will be produced again), and a
    last line cut off by a crash (it does not parse)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line)["step"] < keep_before_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    path.write_text("".join(line + "\n" for line in kept))


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("a") as file:  # closed (so flushed to the OS) every step: a kill loses at most this step
        for row in rows:
            file.write(json.dumps(row) + "\n")


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
