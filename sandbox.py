"""Run model-written Python programs and score them against stdin/stdout tests.

This is the ONLY place in sqlm that executes code written by a model.

Two modes; `isolation()` says which one this process uses (probed once, on the first run):

1. Namespaces (Linux >= 5.12 with unprivileged user namespaces and util-linux `unshare`): every
   program runs in new user, PID, network, mount and IPC namespaces, as root there but with no
   capabilities at all, so
   - it sees only its own processes: it cannot signal the trainer or read its /proc/<pid>/environ,
   - it has no network (a loopback device that is down; abstract unix sockets are per namespace),
   - the whole filesystem is read-only for it, except a fresh, size-capped /tmp (a tmpfs) that holds
     its working directory: all files together are capped, and nothing is left behind on disk;
     /dev holds only null, zero, full, random, urandom; /run (the host's sockets) is hidden,
   - it is its namespace's PID 1: when it exits, times out, or the trainer dies (even by SIGKILL),
     the kernel kills every process in the namespace, whatever setsid() or double forks it tried.
     (As PID 1 it also ignores signals it sends to itself.)
2. Limits only (fallback, announced once, loudly, on stderr): a fresh temp dir, its own process
   group (SIGKILLed after the run) and the limits below. A program can then read and write files
   elsewhere with the trainer's permissions, use the network, signal the trainer, read its
   environment through /proc, and leave processes behind by leaving its process group.

In both modes: a wall-clock timeout, a CPU-time limit, caps on address space, file size and the
output we read back, a minimal environment (no secrets from ours), and death with the trainer.

NOT a security boundary, even with namespaces: the program can READ every file the trainer's user
can read (when training as root: every file) and connect to unix sockets outside /tmp and /run;
it shares our kernel (a kernel bug is an escape, and user namespaces expose a lot of kernel code);
it can use CPU and memory until its timeout. For untrusted models, train inside a VM or a
container without network and without secrets, as an unprivileged user.
"""

import ctypes
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

DEFAULT_TIMEOUT = 2.0                 # wall-clock seconds per test run
MEMORY_LIMIT_BYTES = 512 * 1024**2    # address space of the program
FILE_SIZE_LIMIT_BYTES = 1024**2       # largest file it may write (stdout included)
MAX_OUTPUT_BYTES = 1024**2            # most stdout/stderr we read back
WRITE_LIMIT_BYTES = 4 * 1024**2       # all files together (namespaces only: the size of its /tmp)
WRITE_LIMIT_FILES = 256               # files and directories it may create (namespaces only)
PROBE_TIMEOUT = 10.0                  # the one-time check that namespaces work may be slow under load

# Set this environment variable to any non-empty value to force the limits-only mode (for testing).
LIMITS_ONLY_ENV = "SQLM_SANDBOX_LIMITS_ONLY"
NAMESPACES = "namespaces: user, pid, net, mount, ipc"

# A fixed, minimal environment: nothing from our own environment (API keys,
# tokens, ...) is passed on. HOME is set per run to the program's working dir.
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",            # same set/dict order on every run
    "PYTHONDONTWRITEBYTECODE": "1",
}

# `unshare --fork` makes the program PID 1 of a new PID namespace; when PID 1 exits the kernel kills
# everything else in the namespace. --kill-child SIGKILLs the program if unshare itself dies, and
# --map-root-user makes the program root inside (only there), so the setup below may mount things.
_UNSHARE = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
_UNSHARE_FLAGS = ["--user", "--map-root-user", "--pid", "--fork", "--kill-child",
                  "--net", "--mount", "--mount-proc", "--ipc"]

_LIBC = ctypes.CDLL(None, use_errno=True)   # loaded now: dlopen in a freshly forked child can deadlock
_PR_SET_PDEATHSIG = 1

# The setup that runs INSIDE the namespaces, in the interpreter that then runs the program (one
# interpreter start instead of two). It is a string because it must not import this module: that
# would cost every run ~15 ms of imports. It runs as root of the new user namespace, with all
# capabilities there, and hands over to the program only once every step has succeeded.
_INIT_CODE = r'''
import ctypes, os, runpy, sys

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_MOVE = 1, 2, 4, 8, 32, 4096, 8192
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
DEVICES = ("null", "zero", "full", "random", "urandom")
DEVICE_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                "stderr": "/proc/self/fd/2"}
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, CAPABILITY_VERSION_3 = 24, 38, 0x20080522


class MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("set", "clear", "propagation", "userns_fd")]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def mount_tmpfs(target, options, flags=MS_NOSUID | MS_NODEV):
    check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options.encode()), "mount " + target)


def bind(source, target):
    check(libc.mount(source.encode(), target.encode(), None, MS_BIND, None), f"bind {source}")


def set_mount_attributes(path, flags, add=0, remove=0):
    attr = MountAttr(set=add, clear=remove)
    check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr),
                       ctypes.sizeof(attr)), f"mount_setattr {path}")


def limit_namespaces():
    # Sysctls of OUR namespaces, set while /proc is still writable. No nested user namespaces: in
    # one, the program would have mount rights again (e.g. for a tmpfs without our size cap). And at
    # most ~300 processes, so a fork bomb stays small (kernel >= 6.14: pid_max is per namespace).
    write("/proc/sys/user/max_user_namespaces", "0")
    try:
        write("/proc/sys/kernel/pid_max", "301")     # the smallest value the kernel accepts
    except OSError:
        pass                                         # older kernel: only the timeout bounds forks


def set_up_filesystem(write_bytes, write_files):
    # Everything we inherited becomes read-only, with no device nodes and no setuid, recursively,
    # in one call (kernel >= 5.12).
    set_mount_attributes("/", AT_RECURSIVE, add=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    # The only writable place: a new, size-capped /tmp. It lives in memory and vanishes with the
    # namespace, so nothing is left to clean up, not even if the trainer is SIGKILLed.
    mount_tmpfs("/tmp", f"size={write_bytes},nr_inodes={write_files},mode=0700")
    set_up_dev()
    if os.path.isdir("/run"):                        # hide the host's sockets (docker, dbus, ...)
        mount_tmpfs("/run", "size=4k,nr_inodes=8", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def set_up_dev():
    # A minimal, read-only /dev. The host's holds disks, KVM, consoles, terminals..., which a program
    # that is uid 0 outside (a trainer run as root) could open. Built in /tmp/.dev, moved onto /dev.
    os.mkdir("/tmp/.dev")
    mount_tmpfs("/tmp/.dev", "size=16k,nr_inodes=32,mode=0755")
    for name in DEVICES:
        open(f"/tmp/.dev/{name}", "w").close()
        bind(f"/dev/{name}", f"/tmp/.dev/{name}")
        set_mount_attributes(f"/tmp/.dev/{name}", 0, remove=MOUNT_ATTR_NODEV)   # this node only
    for name, target in DEVICE_LINKS.items():
        os.symlink(target, f"/tmp/.dev/{name}")
    os.mkdir("/tmp/.dev/shm")
    check(libc.mount(b"/tmp/.dev", b"/dev", None, MS_MOVE, None), "move /dev")
    check(libc.mount(None, b"/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
          "make /dev read-only")
    os.mkdir("/tmp/.shm")                            # multiprocessing needs /dev/shm: share the /tmp cap
    bind("/tmp/.shm", "/dev/shm")
    os.rmdir("/tmp/.dev")


def drop_all_capabilities():
    # Root inside, but with no capability left: it cannot undo the mounts above. The empty
    # bounding set and no_new_privs keep capabilities from coming back on exec of another program.
    last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last_cap + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability bounding set")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    check(libc.capset(ctypes.byref(CapHeader(CAPABILITY_VERSION_3, 0)), (CapData * 2)()), "capset")


def set_up(code_fd, workdir, write_bytes, write_files):
    limit_namespaces()
    set_up_filesystem(write_bytes, write_files)
    os.mkdir(workdir)
    os.chdir(workdir)
    with os.fdopen(code_fd, "rb") as source, open("program.py", "wb") as program:
        program.write(source.read())
    # Own process group, so kill(0, ...) reaches nothing of unshare's. Not setsid(): that costs
    # ~2 ms (a new scheduler autogroup), and there is no terminal to detach from: the Popen that
    # started unshare already made a new session without one.
    os.setpgid(0, 0)
    drop_all_capabilities()


def hide_setup_frames(kind, value, traceback):
    """Print tracebacks as if program.py had been run directly, without our frames on top."""
    while traceback is not None and traceback.tb_frame.f_code.co_filename != PROGRAM:
        traceback = traceback.tb_next
    sys.__excepthook__(kind, value.with_traceback(traceback), traceback)


try:
    set_up(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
except Exception as error:
    print(f"sqlm sandbox setup failed: {error!r}", file=sys.stderr)
    os._exit(125)            # fail closed: the program never runs without its isolation
PROGRAM = os.path.abspath("program.py")
sys.argv = [PROGRAM]
sys.excepthook = hide_setup_frames
runpy.run_path(PROGRAM, run_name="__main__")
'''


@dataclass
class RunResult:
    stdout: str
    stderr: str
    returncode: int | None    # negative = killed by that signal (e.g. -9)
    timed_out: bool
    output_truncated: bool    # stdout hit MAX_OUTPUT_BYTES
    seconds: float            # wall-clock time of the run


# ---- which isolation this machine allows --------------------------------------------------------

_isolation_lock = threading.Lock()
_isolation_mode: str | None = None     # computed once per process by isolation()


def isolation() -> str:
    """NAMESPACES, or "limits only: <reason>". Probed once per process; warns once on fallback."""
    global _isolation_mode
    with _isolation_lock:                # pass_fractions calls this from many threads at once
        if _isolation_mode is None:
            _isolation_mode = _probe_isolation()
            if _isolation_mode != NAMESPACES:
                _warn_limits_only(_isolation_mode)
        return _isolation_mode


def _probe_isolation() -> str:
    """Run one tiny program in namespaces; it must see itself as PID 1 and exit cleanly."""
    if os.environ.get(LIMITS_ONLY_ENV):
        return f"limits only: forced by ${LIMITS_ONLY_ENV}"
    if not sys.platform.startswith("linux"):
        return f"limits only: namespaces need Linux, this is {sys.platform}"
    if _UNSHARE is None:
        return "limits only: util-linux `unshare` not found"
    result = _run_in_namespaces("import os\nprint(os.getpid())", "", PROBE_TIMEOUT)
    if result.returncode == 0 and result.stdout.strip() == "1":
        return NAMESPACES
    lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}, no message"]
    return f"limits only: namespaces unavailable ({lines[-1]})"


def _warn_limits_only(mode: str) -> None:
    bar = "!" * 100
    print(f"{bar}\nWARNING sandbox.py: {mode}\n"
          "Model-written programs run with resource limits only: they can read and write your files,\n"
          "use the network, signal this process and leave processes behind. Do not train on an\n"
          "untrusted model like this outside a VM or a container without network and secrets.\n"
          f"{bar}", file=sys.stderr, flush=True)


# ---- starting and stopping one program ----------------------------------------------------------

def _set_limit(kind: int, value: int) -> None:
    """Set soft and hard limit, never above an existing hard limit (non-root can't raise it)."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def _prepare_child(timeout: float, trainer_pid: int):
    """Return a preexec_fn that runs in the forked child, just before exec: limits and death pact."""
    cpu_seconds = int(timeout) + 2    # a backstop; the wall-clock timeout normally fires first

    def prepare() -> None:
        _set_limit(resource.RLIMIT_AS, MEMORY_LIMIT_BYTES)
        _set_limit(resource.RLIMIT_CPU, cpu_seconds)
        _set_limit(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES)
        _set_limit(resource.RLIMIT_CORE, 0)   # no core dumps left on disk
        # SIGKILL this child when its parent dies, so a SIGKILLed trainer leaves no program behind.
        # The kernel means the parent THREAD: fine, the thread that starts a run waits for its end.
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != trainer_pid:       # the trainer died before the line above
            os.kill(os.getpid(), signal.SIGKILL)
    return prepare


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group we started and reap its leader.

    With namespaces that is `unshare`; its death takes the program's whole PID namespace along.
    Without, it also ends children that stayed in the group, e.g. a forked `sleep` or a daemon.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # pgid == pid thanks to start_new_session
    except (ProcessLookupError, PermissionError):
        pass                                  # group already empty
    proc.wait()                               # no zombie left behind


def _wait_for_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until proc exits (True) or `timeout` passes (False), without reaping it.

    A pidfd wakes us the moment the program exits. Popen.wait(timeout) instead polls with sleeps
    that grow to 50 ms, which added ~20 ms to a typical 60 ms run here.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):         # not Linux >= 5.3: fall back to polling
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))   # readable once the process has exited
    finally:
        os.close(pidfd)


def _spooled(text: str):
    """An unnamed temp file holding `text`, rewound: nothing to delete, even after a SIGKILL."""
    f = tempfile.TemporaryFile()
    f.write(text.encode("utf-8", errors="replace"))
    f.seek(0)
    return f


def _read_capped(f) -> str:
    f.seek(0)
    return f.read(MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")


def _execute(argv: list[str], stdin: str, timeout: float, cwd: str, home: str,
             pass_fds: tuple = ()) -> RunResult:
    """Start argv in its own process group with our limits, wait at most `timeout`, then kill it."""
    start = time.monotonic()
    # Output goes to files, not pipes: RLIMIT_FSIZE caps their size, and a
    # grandchild holding the file open can't make us block on a pipe.
    with _spooled(stdin) as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdin=fin, stdout=fout, stderr=ferr, pass_fds=pass_fds,
            env={**BASE_ENV, "HOME": home},
            # Own process group, so we can kill all of it; and own session, without a terminal
            # it could read keys from or write to.
            start_new_session=True,
            # preexec_fn runs Python in the forked child; the docs warn this can deadlock
            # with threads, but ours only calls setrlimit and prctl (no locks).
            preexec_fn=_prepare_child(timeout, os.getpid()),
        )
        try:
            timed_out = not _wait_for_exit(proc, timeout)
        finally:
            _kill_group(proc)                 # before reading, so nothing writes any more
        return RunResult(
            stdout=_read_capped(fout),
            stderr=_read_capped(ferr),
            returncode=None if timed_out else proc.returncode,
            timed_out=timed_out,
            output_truncated=os.fstat(fout.fileno()).st_size >= MAX_OUTPUT_BYTES,
            seconds=time.monotonic() - start,
        )


def _run_in_namespaces(code: str, stdin: str, timeout: float) -> RunResult:
    # The working dir exists only inside the program's own /tmp; the random name keeps programs
    # from relying on a fixed path. The code travels as an open file (fd), not as an argument.
    workdir = f"/tmp/sqlm_run_{os.urandom(6).hex()}"
    with _spooled(code) as code_file:
        fd = code_file.fileno()
        argv = [_UNSHARE, *_UNSHARE_FLAGS, sys.executable, "-I", "-c", _INIT_CODE,
                str(fd), workdir, str(WRITE_LIMIT_BYTES), str(WRITE_LIMIT_FILES)]
        return _execute(argv, stdin, timeout, cwd="/", home=workdir, pass_fds=(fd,))


def _run_with_limits_only(code: str, stdin: str, timeout: float) -> RunResult:
    workdir = tempfile.mkdtemp(prefix="sqlm_run_")
    try:
        program = os.path.join(workdir, "program.py")
        with open(program, "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        # -I: ignore PYTHON* env vars and user site
        return _execute([sys.executable, "-I", program], stdin, timeout, cwd=workdir, home=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_program(code: str, stdin: str = "", timeout: float = DEFAULT_TIMEOUT) -> RunResult:
    """Run `code` with `sys.executable -I`, feeding it `stdin`, isolated as isolation() says."""
    if isolation() == NAMESPACES:
        return _run_in_namespaces(code, stdin, timeout)
    return _run_with_limits_only(code, stdin, timeout)


# ---- scoring ------------------------------------------------------------------------------------

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
