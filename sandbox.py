"""Run model-written Python programs and score them against stdin/stdout tests.

This is the ONLY place in sqlm that executes code written by a model.

What the isolation here stops: runaway loops (wall-clock timeout + CPU limit),
memory hogs (RLIMIT_AS), output floods (stdout goes to a size-capped file),
leftover child processes (the whole process group is SIGKILLed after every
run), stray files in our working directory (each run gets a fresh temp dir
that is deleted afterwards) and leaks of secrets from our environment (the
program gets a minimal fresh environment).

What it does NOT stop: reading or writing files elsewhere on disk with our
user's permissions (as root, that is everything), network access, a process
that leaves its process group with setsid(), fork bombs when running as root
(RLIMIT_NPROC is per-user and ignored for root), or a determined attacker
(kernel exploits, etc.). For real isolation, run training inside a container
or VM without network, or wrap the command with seccomp/namespaces
(e.g. bubblewrap or nsjail, or at least `unshare -n` to drop the network).
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

DEFAULT_TIMEOUT = 2.0                 # wall-clock seconds per test run
MEMORY_LIMIT_BYTES = 512 * 1024**2    # address space of the program
FILE_SIZE_LIMIT_BYTES = 1024**2       # largest file it may write (stdout included)
MAX_OUTPUT_BYTES = 1024**2            # most stdout/stderr we read back

# A fixed, minimal environment: nothing from our own environment (API keys,
# tokens, ...) is passed on. HOME is set per run to the temp dir.
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",            # same set/dict order on every run
    "PYTHONDONTWRITEBYTECODE": "1",
}


@dataclass
class RunResult:
    stdout: str
    stderr: str
    returncode: int | None    # negative = killed by that signal (e.g. -9)
    timed_out: bool
    output_truncated: bool    # stdout hit MAX_OUTPUT_BYTES
    seconds: float            # wall-clock time of the run


def _set_limit(kind: int, value: int) -> None:
    """Set soft and hard limit, never above an existing hard limit (non-root can't raise it)."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def _limits_for(timeout: float):
    """Return a preexec_fn that applies resource limits in the child, just before exec."""
    cpu_seconds = int(timeout) + 2    # a backstop; the wall-clock timeout normally fires first

    def apply_limits() -> None:
        _set_limit(resource.RLIMIT_AS, MEMORY_LIMIT_BYTES)
        _set_limit(resource.RLIMIT_CPU, cpu_seconds)
        _set_limit(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES)
        _set_limit(resource.RLIMIT_CORE, 0)   # no core dumps left on disk
    return apply_limits


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group and reap the program itself.

    Killing the group (not just the program) also ends children and
    grandchildren that outlived it, e.g. a forked `sleep` or a double-fork daemon.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # pgid == pid thanks to start_new_session
    except (ProcessLookupError, PermissionError):
        pass                                  # group already empty
    proc.wait()                               # no zombie left behind


def _read_capped(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")


def run_program(code: str, stdin: str = "", timeout: float = DEFAULT_TIMEOUT) -> RunResult:
    """Run `code` with `sys.executable -I` in a fresh temp dir, feeding it `stdin`."""
    workdir = tempfile.mkdtemp(prefix="sqlm_run_")
    start = time.monotonic()
    proc = None
    timed_out = False
    try:
        program = os.path.join(workdir, "program.py")
        with open(program, "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        stdin_path = os.path.join(workdir, "stdin.txt")
        with open(stdin_path, "w", encoding="utf-8", errors="replace") as f:
            f.write(stdin)
        stdout_path = os.path.join(workdir, "stdout.txt")
        stderr_path = os.path.join(workdir, "stderr.txt")
        # Output goes to files, not pipes: RLIMIT_FSIZE caps their size, and a
        # grandchild holding the file open can't make us block on a pipe.
        with open(stdin_path, "rb") as fin, \
             open(stdout_path, "wb") as fout, open(stderr_path, "wb") as ferr:
            proc = subprocess.Popen(
                [sys.executable, "-I", program],  # -I: ignore PYTHON* env vars and user site
                cwd=workdir, stdin=fin, stdout=fout, stderr=ferr,
                env={**BASE_ENV, "HOME": workdir},
                start_new_session=True,           # own process group, so we can kill all of it
                # preexec_fn runs Python in the forked child; the docs warn this can
                # deadlock with threads, but ours only calls setrlimit (no locks).
                preexec_fn=_limits_for(timeout),
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
        _kill_group(proc)                         # before reading, so nothing writes any more
        return RunResult(
            stdout=_read_capped(stdout_path),
            stderr=_read_capped(stderr_path),
            returncode=None if timed_out else proc.returncode,
            timed_out=timed_out,
            output_truncated=os.path.getsize(stdout_path) >= MAX_OUTPUT_BYTES,
            seconds=time.monotonic() - start,
        )
    finally:
        if proc is not None:
            _kill_group(proc)                     # again, in case anything above raised
        shutil.rmtree(workdir, ignore_errors=True)


def normalize_output(text: str) -> str:
    """Unify newlines, strip trailing spaces on each line, drop trailing blank lines."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines)


def passes(result: RunResult, expected_output: str) -> bool:
    """A test passes only on a clean exit (no crash, timeout or sys.exit(n!=0)) with matching stdout."""
    return (result.returncode == 0 and not result.timed_out and not result.output_truncated
            and normalize_output(result.stdout) == normalize_output(expected_output))


def pass_fraction(code: str, tests: list[tuple[str, str]], timeout: float = DEFAULT_TIMEOUT) -> float:
    """Fraction of (input, expected_output) tests that `code` passes; 0.0 for no tests."""
    if not tests:
        return 0.0
    passed = sum(passes(run_program(code, stdin, timeout), expected) for stdin, expected in tests)
    return passed / len(tests)


def pass_fractions(codes: list[str | None], tests_per_code: list[list[tuple[str, str]]],
                   timeout: float = DEFAULT_TIMEOUT, max_workers: int | None = None) -> list[float]:
    """pass_fraction for many programs at once, in order; a None code scores 0.0.

    Threads are enough here: each one just waits on a subprocess.
    """
    if len(codes) != len(tests_per_code):
        raise ValueError("codes and tests_per_code must have the same length")

    def score(pair):
        code, tests = pair
        return 0.0 if code is None else pass_fraction(code, tests, timeout)

    with ThreadPoolExecutor(max_workers=max_workers or os.cpu_count() or 1) as pool:
        return list(pool.map(score, zip(codes, tests_per_code)))
