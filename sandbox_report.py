"""What sandbox.py contains, and how fast it is: hostile programs and programs per second, optionally against an
older sandbox.py, in one command whose output is the table the README quotes.

    python3 sandbox_report.py                         # hostile-case table + programs/s for ./sandbox.py
    python3 sandbox_report.py --against OLD.py        # the same, alternated, for an older sandbox.py too
    python3 sandbox_report.py --as-user nobody        # also run each hostile case with an unprivileged trainer
    python3 sandbox_report.py --speed-only --repeats 6

    git show a0d3c71:sandbox.py > /tmp/sandbox_before.py     # a0d3c71: the last commit before the namespaces
    git show 76b26b7:sandbox.py > /tmp/sandbox_before.py     # 76b26b7: the last one before the minimal root
    python3 sandbox_report.py --against /tmp/sandbox_before.py --as-user nobody

It prints markdown:

1. Hostile programs. Each one runs in a fresh "trainer" subprocess that loads one sandbox.py by path and calls its
   run_program once, so a program that kills its trainer cannot kill this report. Afterwards the report checks
   from the outside what the program managed (a file on the host, a process still alive, a secret in its output,
   a connection made) and says "contained", "not contained" or "bounded" (a count that stopped short of what the
   program asked for). A case whose program could not be shown to have run says "error", and one that cannot be
   set up here (e.g. a socket in /run without root) says "skipped": "contained" is printed only after a check.
   Everything a case leaves behind (processes, files) is removed afterwards. The time is the run's wall-clock
   time (RunResult.seconds); for the SIGKILLed trainer, the time from the kill until every process of the run is
   gone. Cases named "limits only" run with the fallback forced ($SQLM_SANDBOX_LIMITS_ONLY, in every version).
   Cases named "correct program" check that the sandbox does not change what a correct program does: "as
   outside" or "differs from outside". The last case is a known gap: the current sandbox.py does not contain it.
2. Programs per second: one fixed program against every test of data/coding_eval.jsonl through pass_fractions
   (one worker per core), plus single runs of print(1) one at a time, for each version and for the current one
   forced into its limits-only mode; all in this process, alternated, medians with min-max over --repeats.

Timings on shared cores are noisy: the report prints the machine and its load average at start and end, and the
ratios of interleaved medians are what to trust. With the defaults it takes about a minute on 2 cores; with
--against, --as-user and --repeats 6 two to three minutes. --as-user needs root and util-linux setpriv.
"""

import argparse
import contextlib
import dataclasses
import glob
import importlib.util
import json
import os
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SANDBOX = os.path.join(REPO, "sandbox.py")
DEFAULT_DATA = os.path.join(REPO, "data", "coding_eval.jsonl")

CONTAINED, NOT_CONTAINED, BOUNDED = "contained", "not contained", "bounded"
AS_OUTSIDE, DIFFERS = "as outside", "differs from outside"     # for correct programs: does the sandbox change them?
ERROR, SKIPPED = "error", "skipped"
NO_ISOLATION = "limits only (this version has no isolation())"
FORCED_LIMITS_ONLY = "limits only: forced by sandbox_report.py"

RAN = "sqlm-report: the program got this far"    # printed by hostile programs whose success would be silent
SECRET_NAME = "SQLM_REPORT_SECRET"                # planted in the trainer's environment
LIMITS_ONLY = {"SQLM_SANDBOX_LIMITS_ONLY": "1"}   # a trainer environment that forces the fallback (old and new)
REQUIRE_ISOLATION = {"SQLM_REQUIRE_ISOLATION": "1"}
MEMORY_ASKED_MIB = 1024                           # what the memory hogs ask for, in 1 MiB pieces
TRAINER_TIMEOUT = 60.0                            # far above any case; a trainer stuck longer is killed
OUTLIVE_WAIT = 1.0                                # how long after a run we look for processes that outlived it
FORK_ATTEMPTS = 500
SPEED_PROGRAM = "print(sum(map(int, input().split())))"   # right on a few problems; speed is the point
SERIAL_RUNS = 10                                  # print(1) runs one at a time, per variant and repeat
# Interpreters to try for an unprivileged trainer: root's own (e.g. under /root/.pyenv) is often out of its reach.
PYTHONS_TO_TRY = (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3")

# The trainer: a separate process that loads one sandbox.py by path, runs one program and prints the result
# as JSON. It imports nothing else, so it behaves as a training run with that sandbox.py would.
TRAINER_CODE = textwrap.dedent(f"""
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("sandbox_under_test", sys.argv[1])
    sandbox = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sandbox)
    mode = sandbox.isolation() if hasattr(sandbox, "isolation") else {NO_ISOLATION!r}
    result = sandbox.run_program(sys.argv[2], timeout=float(sys.argv[3]))
    print(json.dumps({{"mode": mode, **result.__dict__}}), flush=True)
""")


# ---- trainers: one sandbox.py, run as one user, in a fresh process per program ------------------------------

@dataclass
class Trainer:
    version: str                # "old" or "current"
    sandbox_path: str
    user: str
    command: tuple | None       # starts a Python as `user`; None: no interpreter that user can run
    uid: int
    gid: int
    mode: str = "?"             # what isolation() said in this trainer's last run


@dataclass
class TrainerRun:
    status: int | None          # the trainer's exit status; -9 = SIGKILLed
    result: dict | None         # RunResult's fields plus "mode", when the trainer finished normally
    stderr: str

    @property
    def stdout(self) -> str:
        return self.result["stdout"] if self.result else ""

    @property
    def seconds(self) -> float | None:
        return self.result["seconds"] if self.result else None


@dataclass
class Outcome:
    verdict: str                # CONTAINED, NOT_CONTAINED, BOUNDED, ERROR or SKIPPED
    detail: str                 # what was checked, in a few words
    seconds: float | None       # see the module docstring; None when there is no run to time


def own_trainer(version: str, sandbox_path: str) -> Trainer:
    """A trainer that runs as the user running this report, with this interpreter."""
    return Trainer(version, sandbox_path, pwd.getpwuid(os.geteuid()).pw_name, (sys.executable,),
                   os.geteuid(), os.getegid())


def unprivileged_trainer(version: str, sandbox_path: str, user: str, all_paths: list[str]) -> Trainer:
    """A trainer that runs as `user` (we must be root), with the first interpreter that user can run."""
    entry = pwd.getpwnam(user)
    # setpriv itself still execs with root's rights; `sh -c 'exec "$@"'` makes the exec of the interpreter an
    # unprivileged one, so an interpreter that the user cannot read is refused as it would be for that user.
    become = (shutil.which("setpriv"), f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
              "/bin/sh", "-c", 'exec "$@"', "sh")
    readable = "import sys\nfor path in sys.argv[1:]:\n    open(path).close()\n"
    for python in PYTHONS_TO_TRY:
        if os.path.exists(python) and subprocess.run([*become, python, "-c", readable, *all_paths],
                                                     capture_output=True, cwd="/").returncode == 0:
            return Trainer(version, sandbox_path, user, (*become, python), entry.pw_uid, entry.pw_gid)
    return Trainer(version, sandbox_path, user, None, entry.pw_uid, entry.pw_gid)


def start_trainer(trainer: Trainer, code: str, timeout: float, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*trainer.command, "-c", TRAINER_CODE, trainer.sandbox_path, code, str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                            env={**os.environ, **(env or {})})


def finish_trainer(trainer: Trainer, process: subprocess.Popen) -> TrainerRun:
    try:
        out, err = process.communicate(timeout=TRAINER_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    result = json.loads(out) if process.returncode == 0 and out.strip() else None
    if result is not None:
        trainer.mode = result["mode"]
    return TrainerRun(process.returncode, result, err)


def run_in_trainer(trainer: Trainer, code: str, timeout: float = 2.0, env: dict | None = None) -> TrainerRun:
    return finish_trainer(trainer, start_trainer(trainer, code, timeout, env))


def did_not_run(run: TrainerRun) -> Outcome:
    """The verdict when we cannot show that the program ran: never "contained" by default."""
    lines = (run.result["stderr"] if run.result else run.stderr).strip().splitlines()
    why = lines[-1][:80] if lines else f"trainer exit status {run.status}"
    return Outcome(ERROR, f"the program did not run as planned: {why}", run.seconds)


# ---- finding and removing what a case leaves behind --------------------------------------------------------

def unique_sleep_argument() -> str:
    """A `sleep` argument no other process uses, so we can find a program's processes on the host."""
    return f"{30 + random.random():.9f}"


def pids_running(argument: str) -> list[int]:
    """Host pids whose command line contains `argument` (zombies have an empty command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if argument.encode() in f.read().split(b"\0"):
                    pids.append(int(entry))
        except (OSError, ValueError):
            pass                                 # not a pid, or it just exited
    return pids


def kill_all_running(argument: str) -> None:
    for pid in pids_running(argument):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> set[int]:
    """All processes below `pid` on the host, found through the parent pid in /proc/<pid>/stat."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent_of[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def is_alive(pid: int) -> bool:
    """A zombie (dead, waiting to be reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except (FileNotFoundError, ProcessLookupError):   # ESRCH while it exits
        return False


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def give_to(path: str, trainer: Trainer) -> None:
    """Make `path` the trainer user's, as its own files would be (only root may, and only root needs to)."""
    if trainer.uid != os.geteuid():
        os.chown(path, trainer.uid, trainer.gid)


@contextlib.contextmanager
def directory_of(trainer: Trainer, parent: str | None = None):
    """A fresh 0700 directory owned by the trainer's user, removed afterwards with all it holds."""
    path = tempfile.mkdtemp(prefix="sqlm_report_", dir=parent)
    give_to(path, trainer)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- the hostile cases: each takes a Trainer and returns an Outcome ----------------------------------------

def case_environ(trainer: Trainer) -> Outcome:
    """The trainer's environment holds a secret; the program looks for it in every /proc/<pid>/environ."""
    secret = uuid.uuid4().hex
    code = textwrap.dedent(f"""
        import os
        for pid in [os.getppid(), *os.listdir('/proc')]:
            try:
                entries = open(f'/proc/{{pid}}/environ').read().split('\\0')
            except OSError:
                continue
            print(*[entry for entry in entries if entry.startswith('{SECRET_NAME}=')])
        print({RAN!r})
    """)
    run = run_in_trainer(trainer, code, env={SECRET_NAME: secret})
    if RAN not in run.stdout:
        return did_not_run(run)
    if secret in run.stdout:
        return Outcome(NOT_CONTAINED, "secret printed", run.seconds)
    return Outcome(CONTAINED, "secret not seen", run.seconds)


def case_kill_trainer(trainer: Trainer) -> Outcome:
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('alive')\n"
    with directory_of(trainer) as trainer_tmp:           # where the trainer's temp files go
        run = run_in_trainer(trainer, code, env={"TMPDIR": trainer_tmp})
        left = len(os.listdir(trainer_tmp))
    if run.status == -signal.SIGKILL:
        return Outcome(NOT_CONTAINED, f"trainer SIGKILLed, temp entries left: {left}", None)
    if "alive" not in run.stdout:
        return did_not_run(run)
    verdict = CONTAINED if left == 0 else NOT_CONTAINED
    return Outcome(verdict, f"trainer exit status {run.status}, temp entries left: {left}", run.seconds)


def leave_the_group(trainer: Trainer, leave: str, env: dict | None = None) -> Outcome:
    """A child leaves the program's process group, and after the run writes a file and becomes a `sleep`."""
    marker, token = f"/tmp/sqlm_report_escape_{uuid.uuid4().hex}", unique_sleep_argument()
    code = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            {leave}
            time.sleep(0.3)
            open({marker!r}, 'w').write('escaped')
            os.execvp('sleep', ['sleep', {token!r}])
        time.sleep(0.1)                                  # the child has left the group by now
        print({RAN!r})
    """)
    try:
        run = run_in_trainer(trainer, code, env=env)
        time.sleep(OUTLIVE_WAIT)
        landed, survivors = os.path.exists(marker), len(pids_running(token))
    finally:
        kill_all_running(token)
        remove_quietly(marker)
    if RAN not in run.stdout:
        return did_not_run(run)
    verdict = CONTAINED if not landed and not survivors else NOT_CONTAINED
    return Outcome(verdict, f"file written: {'yes' if landed else 'no'}, survivors: {survivors}", run.seconds)


def case_setsid(trainer: Trainer) -> Outcome:
    return leave_the_group(trainer, "os.setsid()")


def case_setpgid(trainer: Trainer) -> Outcome:
    return leave_the_group(trainer, "os.setpgid(0, 0)")


def case_limits_only_setsid(trainer: Trainer) -> Outcome:
    return leave_the_group(trainer, "os.setsid()", env=LIMITS_ONLY)


def case_busy_children(trainer: Trainer) -> Outcome:
    token = unique_sleep_argument()
    code = textwrap.dedent(f"""
        import os, sys, time
        while True:
            if os.fork() == 0:
                os.setsid()
                os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', {token!r}])
            print('forked', flush=True)
            time.sleep(0.1)
    """)
    try:
        run = run_in_trainer(trainer, code, timeout=1.0)
        time.sleep(OUTLIVE_WAIT)
        survivors = len(pids_running(token))
    finally:
        kill_all_running(token)
    started = run.stdout.count("forked")
    if not started:
        return did_not_run(run)
    verdict = CONTAINED if not survivors else NOT_CONTAINED
    return Outcome(verdict, f"{started} started, {survivors} alive {OUTLIVE_WAIT:.0f} s after the run", run.seconds)


def case_many_files(trainer: Trainer) -> Outcome:
    name = f"sqlm_report_fill_{uuid.uuid4().hex}_"
    code = textwrap.dedent(f"""
        written = 0
        for i in range(50):
            try:
                with open('/tmp/{name}' + str(i), 'wb') as f:
                    f.write(b'x' * 1024**2)
                written += 1024**2
            except OSError:
                pass
        print(written)
    """)
    try:
        run = run_in_trainer(trainer, code)
        left = [os.path.join("/tmp", entry) for entry in os.listdir("/tmp") if entry.startswith(name)]
        left_bytes = sum(os.path.getsize(path) for path in left)
    finally:
        for entry in os.listdir("/tmp"):
            if entry.startswith(name):
                remove_quietly(os.path.join("/tmp", entry))
    if not run.stdout.strip().isdigit():
        return did_not_run(run)
    accepted = int(run.stdout)
    verdict = CONTAINED if accepted < 50 * 1024**2 and not left_bytes else NOT_CONTAINED
    detail = f"accepted: {accepted / 2**20:.0f} MiB, left on the host: {left_bytes / 2**20:.0f} MiB"
    return Outcome(verdict, detail, run.seconds)


def case_write_outside(trainer: Trainer) -> Outcome:
    name = f"sqlm_report_escape_{uuid.uuid4().hex}"
    with directory_of(trainer, parent="/var/tmp") as own_dir:      # stands for the trainer's own files
        targets = {"/tmp": f"/tmp/{name}", "/var/tmp": f"/var/tmp/{name}", "/root": f"/root/{name}",
                   "own dir": os.path.join(own_dir, name)}
        code = textwrap.dedent(f"""
            for path in {list(targets.values())!r}:
                try:
                    open(path, 'w').write('escaped')
                except OSError:
                    pass
            print({RAN!r})
        """)
        try:
            run = run_in_trainer(trainer, code)
            landed = [label for label, path in targets.items() if os.path.exists(path)]
        finally:
            for path in targets.values():
                remove_quietly(path)
    if RAN not in run.stdout:
        return did_not_run(run)
    return Outcome(NOT_CONTAINED if landed else CONTAINED, f"landed: {', '.join(landed) or 'none'}", run.seconds)


def connect_code(family: str, address) -> str:
    return textwrap.dedent(f"""
        import socket
        with socket.socket(socket.{family}) as s:
            s.settimeout(1)
            try:
                s.connect({address!r})
                print('connected')
            except OSError as error:
                print('blocked:', error.strerror)
    """)


def connection_outcome(run: TrainerRun) -> Outcome:
    if "connected" in run.stdout:
        return Outcome(NOT_CONTAINED, "connected", run.seconds)
    if "blocked" in run.stdout:
        return Outcome(CONTAINED, run.stdout.strip(), run.seconds)
    return did_not_run(run)


def case_tcp(trainer: Trainer) -> Outcome:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return connection_outcome(run_in_trainer(trainer, connect_code("AF_INET", server.getsockname())))


def case_abstract_unix(trainer: Trainer) -> Outcome:
    with socket.socket(socket.AF_UNIX) as server:
        address = f"\0sqlm_report_{uuid.uuid4().hex}"    # no file: lives in the network namespace
        server.bind(address)
        server.listen()
        return connection_outcome(run_in_trainer(trainer, connect_code("AF_UNIX", address)))


def unix_socket_file(trainer: Trainer, folder: str) -> Outcome:
    path = os.path.join(folder, f"sqlm_report_{uuid.uuid4().hex}.sock")
    with socket.socket(socket.AF_UNIX) as server:
        try:
            server.bind(path)
        except OSError as error:
            return Outcome(SKIPPED, f"cannot create a socket in {folder} here: {error.strerror}", None)
        try:
            os.chmod(path, 0o666)                            # like a daemon's socket that everyone may use
            server.listen()
            return connection_outcome(run_in_trainer(trainer, connect_code("AF_UNIX", path)))
        finally:
            remove_quietly(path)


def case_unix_socket_in_run(trainer: Trainer) -> Outcome:
    return unix_socket_file(trainer, "/run")                 # where docker's and dbus's sockets live


def case_unix_socket_in_var_tmp(trainer: Trainer) -> Outcome:
    return unix_socket_file(trainer, "/var/tmp")


def held_outcome(run: TrainerRun, what: str) -> Outcome:
    """A memory hog printed how many MiB it held: all it asked for, or fewer."""
    if not run.stdout.strip().isdigit():
        return did_not_run(run)
    held = int(run.stdout)
    verdict = NOT_CONTAINED if held >= MEMORY_ASKED_MIB else BOUNDED
    return Outcome(verdict, f"held {held} of {MEMORY_ASKED_MIB} MiB of {what}", run.seconds)


def case_memfd(trainer: Trainer) -> Outcome:
    """memfds are memory without address space: the address-space cap does not see them."""
    code = textwrap.dedent(f"""
        import os
        fds = []
        try:
            for _ in range({MEMORY_ASKED_MIB}):
                fds.append(os.memfd_create('hog'))
                os.write(fds[-1], b'x' * 2**20)
        except OSError:
            pass
        print(len(fds))
    """)
    return held_outcome(run_in_trainer(trainer, code, timeout=5.0), "memfd")


def case_sysv_shm(trainer: Trainer) -> Outcome:
    """SysV shared memory segments outlive their attachment: each is touched, detached and kept."""
    code = textwrap.dedent(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        held = 0
        while held < {MEMORY_ASKED_MIB}:
            ident = libc.shmget(0, 2**20, 0o1600)            # IPC_PRIVATE, IPC_CREAT | 0600
            address = libc.shmat(ident, None, 0) if ident >= 0 else None
            if address in (None, 2**64 - 1):
                break
            ctypes.memset(address, 1, 2**20)
            libc.shmdt(ctypes.c_void_p(address))
            held += 1
        print(held)
    """)
    return held_outcome(run_in_trainer(trainer, code, timeout=5.0), "SysV shm")


def case_sysv_semaphores(trainer: Trainer) -> Outcome:
    """100 arrays of 32000 SysV semaphores: ~170 MiB of kernel memory here, seen by no limit of the process."""
    code = ("import ctypes\nlibc = ctypes.CDLL(None)\n"
            "print(sum(libc.semget(0, 32000, 0o1600) >= 0 for _ in range(100)))\n")   # IPC_PRIVATE, IPC_CREAT | 0600
    run = run_in_trainer(trainer, code, timeout=5.0)
    if not run.stdout.strip().isdigit():
        return did_not_run(run)
    arrays = int(run.stdout)
    verdict = NOT_CONTAINED if arrays == 100 else CONTAINED if arrays == 0 else BOUNDED
    return Outcome(verdict, f"{arrays} of 100 arrays", run.seconds)


def case_memory_in_children(trainer: Trainer) -> Outcome:
    """16 children hold 48 MiB of memfd each: every limit is per process, so together they pass the 512 MiB cap."""
    code = textwrap.dedent("""
        import os, time
        read_end, write_end = os.pipe()
        for _ in range(16):
            if os.fork() == 0:
                fds = []
                try:
                    for _ in range(48):
                        fds.append(os.memfd_create('hog'))
                        os.write(fds[-1], b'x' * 2**20)
                except OSError:
                    pass
                os.write(write_end, b'x' * len(fds))         # one byte per MiB held, then hold on
                time.sleep(10)
        os.close(write_end)
        held, deadline = 0, time.monotonic() + 3
        while held < 16 * 48 and time.monotonic() < deadline:
            held += len(os.read(read_end, 1024))
        print(held)
    """)
    run = run_in_trainer(trainer, code, timeout=5.0)
    if not run.stdout.strip().isdigit():
        return did_not_run(run)
    held = int(run.stdout)
    verdict = NOT_CONTAINED if held > 512 else BOUNDED
    return Outcome(verdict, f"held {held} MiB in all", run.seconds)


def case_read_file(trainer: Trainer) -> Outcome:
    secret = uuid.uuid4().hex
    path = f"/var/tmp/sqlm_report_secret_{uuid.uuid4().hex}"
    try:
        with open(path, "w") as f:
            f.write(secret)
        os.chmod(path, 0o600)
        give_to(path, trainer)
        code = f"try:\n    print(open({path!r}).read())\nexcept OSError as error:\n    print('blocked:', error)\n"
        run = run_in_trainer(trainer, code)
    finally:
        remove_quietly(path)
    if secret in run.stdout:
        return Outcome(NOT_CONTAINED, "read it", run.seconds)
    if "blocked" in run.stdout:
        return Outcome(CONTAINED, "could not read it", run.seconds)
    return did_not_run(run)


def case_devices(trainer: Trainer) -> Outcome:
    code = textwrap.dedent(f"""
        import os
        for path in ['/dev/kvm', '/dev/loop0', '/dev/console', '/dev/vda', '/dev/kmsg']:
            try:
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                print(path)
            except OSError:
                pass
        print({RAN!r})
    """)
    run = run_in_trainer(trainer, code)
    if RAN not in run.stdout:
        return did_not_run(run)
    opened = [line for line in run.stdout.splitlines() if line.startswith("/dev/")]
    return Outcome(NOT_CONTAINED if opened else CONTAINED, f"opened: {', '.join(opened) or 'none'}", run.seconds)


def case_fork_count(trainer: Trainer) -> Outcome:
    """Fork until the kernel refuses or FORK_ATTEMPTS children exist; each child becomes a findable `sleep`."""
    token = unique_sleep_argument()
    code = textwrap.dedent(f"""
        import os
        count = 0
        for _ in range({FORK_ATTEMPTS}):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                try:
                    os.execvp('sleep', ['sleep', {token!r}])
                finally:
                    os._exit(1)
            count += 1
        print(count)
    """)
    try:
        run = run_in_trainer(trainer, code, timeout=10.0)
        time.sleep(OUTLIVE_WAIT)
        survivors = len(pids_running(token))
    finally:
        kill_all_running(token)
    if not run.stdout.strip().isdigit():
        return did_not_run(run)
    count = int(run.stdout)
    if count >= FORK_ATTEMPTS or survivors:
        return Outcome(NOT_CONTAINED, f"{count} forked, {survivors} alive after the run", run.seconds)
    return Outcome(BOUNDED, f"fork refused after {count}, none alive after the run", run.seconds)


def case_trainer_sigkilled(trainer: Trainer, env: dict | None = None) -> Outcome:
    """SIGKILL the trainer while its program and two `sleep`s (one in its own session) run."""
    token = unique_sleep_argument()
    code = textwrap.dedent(f"""
        import os, subprocess, time
        subprocess.Popen(['sleep', {token!r}])
        if os.fork() == 0:
            os.setsid()
            os.execvp('sleep', ['sleep', {token!r}])
        time.sleep(30)
    """)
    with directory_of(trainer) as trainer_tmp:
        process = start_trainer(trainer, code, timeout=TRAINER_TIMEOUT,
                                env={"TMPDIR": trainer_tmp, **(env or {})})
        tree = set()
        try:
            deadline = time.monotonic() + 10
            while len(pids_running(token)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            started = len(pids_running(token)) == 2
            tree = descendants(process.pid)              # the sandbox's processes, the program, its children
            killed_at = time.monotonic()
            process.kill()
            process.communicate()
            while any(is_alive(pid) for pid in tree) and time.monotonic() - killed_at < 2.0:
                time.sleep(0.01)
            seconds = time.monotonic() - killed_at
            survivors = sum(is_alive(pid) for pid in tree)
            left = len(os.listdir(trainer_tmp))
        finally:
            if process.poll() is None:                   # something above failed before the kill
                process.kill()
                process.communicate()
            kill_all_running(token)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    if not started:
        return Outcome(ERROR, "the program's two sleeps did not start within 10 s", None)
    verdict = CONTAINED if not survivors and not left else NOT_CONTAINED
    detail = f"{survivors} of {len(tree)} processes alive {seconds:.2f} s after the kill, temp entries left: {left}"
    return Outcome(verdict, detail, seconds)


def case_required_isolation(trainer: Trainer) -> Outcome:
    """Limits only, with $SQLM_REQUIRE_ISOLATION: the program tries to plant a .pth file in a directory of the
    trainer's user (standing for site-packages, where it would run at the next interpreter start)."""
    with directory_of(trainer, parent="/var/tmp") as site_packages:
        planted = os.path.join(site_packages, "sqlm_report_planted.pth")
        code = f"open({planted!r}, 'w').write('import os')\nprint({RAN!r})\n"
        run = run_in_trainer(trainer, code, env={**LIMITS_ONLY, **REQUIRE_ISOLATION})
        landed = os.path.exists(planted)
    if landed:
        return Outcome(NOT_CONTAINED, "planted", run.seconds)
    if run.result is None and "SQLM_REQUIRE_ISOLATION" in run.stderr:
        return Outcome(CONTAINED, f"refused: {run.stderr.strip().splitlines()[-1].split(':')[0]}", None)
    return did_not_run(run)


# ---- correct programs: does the sandbox change what they do? --------------------------------------------

def behaviour(run: TrainerRun, as_outside: bool, detail: str) -> Outcome:
    if run.result is None:
        return did_not_run(run)
    return Outcome(AS_OUTSIDE if as_outside else DIFFERS, detail, run.seconds)


def case_self_signal(trainer: Trainer) -> Outcome:
    """Outside, a program that sends itself SIGTERM dies of it; as PID 1 of a namespace it would not."""
    run = run_in_trainer(trainer, "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nprint('survived')\n")
    status = run.result and run.result["returncode"]
    return behaviour(run, status == -signal.SIGTERM, f"exit status {status}")


def case_exact_output(trainer: Trainer) -> Outcome:
    run = run_in_trainer(trainer, "import sys\nsys.stdout.write('x' * 2**20)\n")
    cut = run.result and run.result["output_truncated"]
    return behaviour(run, run.result and not cut and run.stdout == "x" * 2**20,
                     f"{len(run.stdout)} bytes back, {'marked cut' if cut else 'whole'}")


def case_threads(trainer: Trainer) -> Outcome:
    code = textwrap.dedent("""
        import threading
        done, started = threading.Event(), 0
        try:
            for _ in range(50):
                threading.Thread(target=done.wait).start()
                started += 1
        finally:
            done.set()
            print(started)
    """)
    run = run_in_trainer(trainer, code, timeout=5.0)
    started = run.stdout.strip()
    return behaviour(run, started == "50", f"{started or '?'} of 50 started")


def case_runtime_under_tmp(trainer: Trainer) -> Outcome:
    """The trainer runs from a virtualenv under /tmp; the program imports a module installed only there."""
    with directory_of(trainer, parent="/tmp") as folder:
        venv = os.path.join(folder, "venv")
        made = subprocess.run([*trainer.command, "-m", "venv", "--without-pip", venv], capture_output=True,
                              text=True, cwd="/")
        if made.returncode != 0:
            return Outcome(SKIPPED, f"no virtualenv here: {(made.stderr.strip().splitlines() or ['?'])[-1]}", None)
        site_packages = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))[0]
        with open(os.path.join(site_packages, "sqlm_report_venv_only.py"), "w") as f:
            f.write("WHERE = 'the venv'\n")
        in_venv = dataclasses.replace(trainer, command=(*trainer.command[:-1], os.path.join(venv, "bin", "python")))
        run = run_in_trainer(in_venv, "import sqlm_report_venv_only\nprint(sqlm_report_venv_only.WHERE)\n")
    imported = run.stdout == "the venv\n"
    lines = (run.result["stderr"] if run.result else "").strip().splitlines()
    return behaviour(run, imported, "imported" if imported else (lines or ["?"])[-1][:60])


HOSTILE_CASES = [
    ("reads the trainer's environment via /proc/<ppid>/environ", case_environ),
    ("os.kill(os.getppid(), SIGKILL)", case_kill_trainer),
    ("setsid() child writes a file 0.3 s after the run", case_setsid),
    ("setpgid(0, 0) child writes a file 0.3 s after the run", case_setpgid),
    ("keeps forking busy setsid() children (timeout 1 s)", case_busy_children),
    ("50 files of 1 MiB in /tmp", case_many_files),
    ("writes to /tmp, /var/tmp, /root and a dir of the trainer's user", case_write_outside),
    ("reads a 0600 file of the trainer's user in /var/tmp", case_read_file),
    ("TCP connect to a listener on 127.0.0.1", case_tcp),
    ("connects to an abstract unix socket", case_abstract_unix),
    ("connects to a unix socket file in /run", case_unix_socket_in_run),
    ("connects to a unix socket file in /var/tmp", case_unix_socket_in_var_tmp),
    ("opens /dev/kvm, loop0, console, vda, kmsg", case_devices),
    (f"forks {FORK_ATTEMPTS} children", case_fork_count),
    (f"holds {MEMORY_ASKED_MIB} MiB in 1 MiB memfds", case_memfd),
    (f"holds {MEMORY_ASKED_MIB} MiB in 1 MiB SysV shared memory segments", case_sysv_shm),
    ("creates 100 arrays of 32000 SysV semaphores (kernel memory)", case_sysv_semaphores),
    ("trainer SIGKILLed mid-run (time: until all gone)", case_trainer_sigkilled),
    ("limits only: setsid() child writes a file 0.3 s after the run", case_limits_only_setsid),
    ("limits only: trainer SIGKILLed mid-run (time: until all gone)",
     lambda trainer: case_trainer_sigkilled(trainer, env=LIMITS_ONLY)),
    ("limits only + $SQLM_REQUIRE_ISOLATION: plants a .pth file", case_required_isolation),
    ("correct program: its runtime is a virtualenv under /tmp", case_runtime_under_tmp),
    ("correct program: sends itself SIGTERM", case_self_signal),
    ("correct program: prints exactly 1 MiB", case_exact_output),
    ("correct program: starts 50 threads", case_threads),
    ("known gap: 16 children hold 48 MiB of memfd each", case_memory_in_children),
]


def run_case(case, trainer: Trainer) -> Outcome:
    if trainer.command is None:
        return Outcome(SKIPPED, f"no Python that {trainer.user} can run with this sandbox.py", None)
    try:
        return case(trainer)
    except Exception as error:        # one broken case must not hide the others; it is reported, not trusted
        return Outcome(ERROR, f"{type(error).__name__}: {error}", None)


def run_hostile_cases(trainers: list[Trainer]) -> dict[tuple[str, str, str], Outcome]:
    """Every case with every trainer; keys are (case name, user, version)."""
    results = {}
    for trainer in trainers:
        for name, case in HOSTILE_CASES:
            outcome = run_case(case, trainer)
            results[(name, trainer.user, trainer.version)] = outcome
            print(f"  {trainer.version:7s} {trainer.user:7s} {outcome.verdict:13s} "
                  f"{format_seconds(outcome.seconds):7s} {name}: {outcome.detail}", file=sys.stderr, flush=True)
    return results


# ---- programs per second, all versions in this process, alternated -----------------------------------------

@dataclass
class SpeedSamples:
    programs_per_second: list[float] = field(default_factory=list)
    ms_per_run: list[float] = field(default_factory=list)
    scores: list[float] | None = None          # pass fractions of the last batch, to compare versions


def load_sandbox(module_name: str, path: str):
    """Import a sandbox.py by path under its own name, so two versions (or two copies) live side by side."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mode_of(module) -> str:
    return module.isolation() if hasattr(module, "isolation") else NO_ISOLATION


def speed_variants(current_path: str, against_path: str | None) -> list[tuple[str, object]]:
    variants = [("old", load_sandbox("sandbox_old", against_path))] if against_path else []
    variants.append(("current", load_sandbox("sandbox_current", current_path)))
    forced = load_sandbox("sandbox_current_limits_only", current_path)
    # A separate copy whose isolation() answers limits-only without probing or warning; the environment variable
    # would not do, since it is read once per process by the first copy that probes.
    forced._isolation_mode = FORCED_LIMITS_ONLY
    variants.append(("current, limits only (forced)", forced))
    return variants


def read_tests(path: str) -> list[list[tuple[str, str]]]:
    with open(path, encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return [[(test["input"], test["output"]) for test in problem["tests"]] for problem in problems]


def time_batch(module, tests: list[list[tuple[str, str]]]) -> tuple[float, list[float]]:
    """Programs per second for one pass_fractions call over every test, and its scores."""
    start = time.monotonic()
    scores = module.pass_fractions([SPEED_PROGRAM] * len(tests), tests)
    return sum(map(len, tests)) / (time.monotonic() - start), scores


def time_serial(module) -> float:
    """Milliseconds per run_program("print(1)"), one at a time: the cost of one run, without overlap."""
    start = time.monotonic()
    for _ in range(SERIAL_RUNS):
        module.run_program("print(1)")
    return (time.monotonic() - start) / SERIAL_RUNS * 1000


def measure_speed(variants: list[tuple[str, object]], tests, repeats: int) -> dict[str, SpeedSamples]:
    samples = {label: SpeedSamples() for label, _ in variants}
    for _, module in variants:
        module.run_program("print(1)")                   # warm-up: the isolation probe, the page cache
    for repeat in range(repeats):
        # Rotate the order each repeat, so no variant always follows the same one (load bursts, caches).
        shift = repeat % len(variants)
        for label, module in variants[shift:] + variants[:shift]:
            rate, samples[label].scores = time_batch(module, tests)
            samples[label].programs_per_second.append(rate)
            samples[label].ms_per_run.append(time_serial(module))
        print(f"  repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{label} {samples[label].programs_per_second[-1]:.1f}/s" for label, _ in variants),
            file=sys.stderr, flush=True)
    return samples


# ---- markdown ----------------------------------------------------------------------------------------------

def format_seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def format_outcome(outcome: Outcome) -> str:
    verdict = f"**{outcome.verdict}**" if outcome.verdict in (NOT_CONTAINED, DIFFERS) else outcome.verdict
    return f"{verdict} ({outcome.detail})"


def hostile_table(results: dict[tuple[str, str, str], Outcome], case_names: list[str], users: list[str],
                  versions: list[str]) -> list[str]:
    """One row per case and trainer user; per version a verdict (detail) column and a time column."""
    lines = ["| hostile program | trainer | " + " | ".join(f"{version} | time" for version in versions) + " |",
             "|---|---|" + "---|---|" * len(versions)]
    for name in case_names:
        for user in users:
            cells = [f"{format_outcome(results[(name, user, version)])} | "
                     f"{format_seconds(results[(name, user, version)].seconds)}" for version in versions]
            lines.append(f"| {name} | {user} | " + " | ".join(cells) + " |")
    return lines


def median_and_range(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def speed_table(samples: dict[str, SpeedSamples], modes: dict[str, str]) -> list[str]:
    lines = ["| sandbox | isolation | programs/s, median (min-max) | ms per run alone, median (min-max) |",
             "|---|---|---|---|"]
    for label, sample in samples.items():
        lines.append(f"| {label} | {modes[label]} | {median_and_range(sample.programs_per_second, 1)} | "
                     f"{median_and_range(sample.ms_per_run, 0)} |")
    return lines


def ratio_lines(samples: dict[str, SpeedSamples]) -> list[str]:
    """Ratios of medians: current vs old, and current vs its own limits-only mode."""
    def ratio(a: str, b: str) -> str:
        rate = statistics.median(samples[a].programs_per_second) / statistics.median(samples[b].programs_per_second)
        ms = statistics.median(samples[a].ms_per_run) / statistics.median(samples[b].ms_per_run)
        return f"- {a} / {b}: {rate:.2f}x programs/s, {ms:.2f}x ms per run alone (medians)"
    pairs = [("current", other) for other in samples if other != "current"]
    return [ratio(a, b) for a, b in pairs]


def machine_line() -> str:
    return (f"Linux {os.uname().release}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
            f"running as {pwd.getpwuid(os.geteuid()).pw_name}")


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1 / 5 / 15 min)"


# ---- the command ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", default=DEFAULT_SANDBOX, help="the current sandbox.py (default: next to me)")
    parser.add_argument("--against", help="an older sandbox.py to compare with, e.g. from `git show`")
    parser.add_argument("--as-user", help="also run every hostile case with a trainer of this user (needs root)")
    parser.add_argument("--repeats", type=int, default=3, help="speed measurements per version (default 3)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="coding set for the speed measurement")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--speed-only", action="store_true", help="skip the hostile programs")
    only.add_argument("--hostile-only", action="store_true", help="skip the speed measurement")
    args = parser.parse_args(argv)
    if args.as_user:
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            parser.error("--as-user needs root and util-linux setpriv")
        try:
            pwd.getpwnam(args.as_user)
        except KeyError:
            parser.error(f"no such user: {args.as_user}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.sandbox = os.path.abspath(args.sandbox)          # trainers run in /, so no relative paths
    args.against = args.against and os.path.abspath(args.against)
    return args


def make_trainers(versions: dict[str, str], as_user: str | None) -> list[Trainer]:
    trainers = [own_trainer(version, path) for version, path in versions.items()]
    if as_user:
        trainers += [unprivileged_trainer(version, path, as_user, list(versions.values()))
                     for version, path in versions.items()]
    return trainers


def report_hostile(versions: dict[str, str], as_user: str | None) -> None:
    trainers = make_trainers(versions, as_user)
    print("running the hostile programs...", file=sys.stderr, flush=True)
    results = run_hostile_cases(trainers)
    users = list(dict.fromkeys(trainer.user for trainer in trainers))
    print("\n## Hostile programs, each in a fresh trainer process\n")
    print("\n".join(hostile_table(results, [name for name, _ in HOSTILE_CASES], users, list(versions))))
    print()
    for trainer in trainers:
        print(f"- {trainer.version} as {trainer.user}: isolation() in its trainers said: {trainer.mode}")


def report_speed(variants: list[tuple[str, object]], modes: dict[str, str], data: str, repeats: int) -> None:
    tests = read_tests(data)
    print("measuring programs per second...", file=sys.stderr, flush=True)
    samples = measure_speed(variants, tests, repeats)
    same_scores = all(sample.scores == samples["current"].scores for sample in samples.values())
    print(f"\n## Programs per second, alternated in one process, {repeats} repeat(s)\n")
    print(f"One program against all {sum(map(len, tests))} tests of {os.path.relpath(data, REPO)} "
          f"({len(tests)} problems) per pass_fractions call with {os.cpu_count()} workers; "
          f"{SERIAL_RUNS} runs of print(1) one at a time for \"ms per run alone\".\n")
    print("\n".join(speed_table(samples, modes)))
    print()
    print("\n".join(ratio_lines(samples)))
    print(f"- same scores in every version: {'yes' if same_scores else 'NO'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)           # tables and stderr progress stay in order in a log
    started = time.monotonic()
    versions = {"old": args.against} if args.against else {}
    versions["current"] = args.sandbox
    variants = speed_variants(args.sandbox, args.against)
    modes = {label: mode_of(module) for label, module in variants}
    print("# sandbox_report.py\n")
    print(f"- machine: {machine_line()}")
    print(f"- load average at start: {load_average()}")
    for version, path in versions.items():
        print(f"- {version} = {path}: isolation() here says: {modes[version]}")
    if not args.speed_only:
        report_hostile(versions, args.as_user)
    if not args.hostile_only:
        report_speed(variants, modes, args.data, args.repeats)
    print(f"\n- load average at end: {load_average()}; total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
