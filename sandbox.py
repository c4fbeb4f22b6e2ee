"""Run model-written Python programs and score them against stdin/stdout tests.

This is the ONLY place in sqlm that executes code written by a model.

Two modes; `isolation()` says which one this process uses (probed once, on the first run):

1. Namespaces (Linux >= 5.12 with unprivileged user namespaces and util-linux `unshare`): every
   program runs in new user, PID, network, mount and IPC namespaces, as root there but with no
   capabilities at all, so
   - it sees only its own processes: it cannot signal the trainer or read its /proc/<pid>/environ,
   - it has no network (a loopback device that is down; abstract unix sockets are per namespace),
   - it sees a minimal root, as with bubblewrap: the Python runtime's own directories (its prefixes
     and the directories of its libraries; /usr when it links there), read-only, wherever they live;
     a fresh, size-capped /tmp (a tmpfs) that holds its working directory and is its only writable
     place; /dev with only null, zero, full, random, urandom; its own /proc, read-only. The host's
     other files (/root, /home, /etc, /var, ...) and the unix sockets among them are not there,
   - SysV shared memory, semaphores and message queues are capped in its IPC namespace,
   - a tiny init (our setup code) is PID 1 and the program its child, so the program behaves as
     outside (a signal it sends itself kills it); when the program exits, times out, or the trainer
     dies (even by SIGKILL), the init exits and the kernel kills every process in the namespace,
     whatever setsid() or double forks it tried.
2. Limits only (fallback, announced once, loudly, on stderr; set SQLM_REQUIRE_ISOLATION=1 to refuse
   it instead): a fresh temp dir and the limits below, under a supervisor that ends every process
   the program started and removes the dir when the program ends, times out, or the trainer dies.
   A program can then read and write files elsewhere with the trainer's permissions (a .pth file in
   site-packages runs at the next interpreter start), use the network, signal the trainer and the
   supervisor, and read the trainer's environment through /proc.

In both modes: a wall-clock timeout, a CPU-time limit, caps on address space, file size, open files
and the output we read back, a minimal environment (no secrets from ours), and death with the trainer.

NOT a security boundary, even with namespaces: it shares our kernel (a kernel bug is an escape, and
user namespaces expose a lot of kernel code); it can use CPU until its timeout, and memory per process
(~300 processes); it can read the runtime's directories (and /usr). For untrusted models, train inside
a VM or a container without network and without secrets, as an unprivileged user.
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
MEMORY_LIMIT_BYTES = 512 * 1024**2    # address space of each process
MAX_OUTPUT_BYTES = 1024**2            # most stdout/stderr we read back
FILE_SIZE_LIMIT_BYTES = MAX_OUTPUT_BYTES + 1   # largest file it may write (stdout included): one byte more than
                                      # we read back, so exactly 1 MiB of output is whole and more is seen as cut
OPEN_FILES_LIMIT = 64                 # memfds, pipes and sockets hold memory outside the address space, up to
                                      # ~1 MiB per open file: this caps it at ~64 MiB per process
WRITE_LIMIT_BYTES = 4 * 1024**2       # all files together (namespaces only: the size of its /tmp; SysV shm too)
WRITE_LIMIT_FILES = 256               # files and directories it may create (namespaces only)
PROBE_TIMEOUT = 10.0                  # the one-time check that namespaces work may be slow under load
STOP_GRACE = 1.0                      # limits only: seconds the supervisor gets to clean up before SIGKILL

# Set this environment variable to any non-empty value to force the limits-only mode (for testing).
LIMITS_ONLY_ENV = "SQLM_SANDBOX_LIMITS_ONLY"
# Set this one to refuse the limits-only mode: isolation() and every run then raise SandboxUnavailable.
REQUIRE_ISOLATION_ENV = "SQLM_REQUIRE_ISOLATION"
NAMESPACES = "namespaces: user, pid, net, mount, ipc"

# A fixed, minimal environment: nothing from our own environment (API keys,
# tokens, ...) is passed on. HOME is set per run to the program's working dir.
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",            # same set/dict order on every run
    "PYTHONDONTWRITEBYTECODE": "1",
    # glibc reserves 64 MiB of address space for each thread's malloc arena: under our address-space cap only
    # ~13 threads would start. One arena (Python holds the GIL anyway) leaves room for ~60 (8 MiB stacks).
    "MALLOC_ARENA_MAX": "1",
}

# `unshare --fork` makes our init PID 1 of a new PID namespace; when PID 1 exits the kernel kills
# everything else in the namespace. --kill-child SIGKILLs the init if unshare itself dies, and
# --map-root-user makes it root inside (only there), so the setup below may mount things.
_UNSHARE = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
_UNSHARE_FLAGS = ["--user", "--map-root-user", "--pid", "--fork", "--kill-child",
                  "--net", "--mount", "--mount-proc", "--ipc"]

_LIBC = ctypes.CDLL(None, use_errno=True)   # loaded now: dlopen in a freshly forked child can deadlock
_PR_SET_PDEATHSIG = 1

# The code that runs in the process we start, in the interpreter that then runs the program (one interpreter start
# instead of two). It is a string because it must not import this module: that would cost every run ~15 ms of
# imports. It becomes the program's parent, a tiny init: it sets up the isolation, forks the program, waits for it,
# and writes its exit status to a file we read (as PID 1 it could not die of the program's signal to pass it on).
_INIT_CODE = r'''
import ctypes, gc, os, runpy, signal, sys

libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC = 2, 4, 4096, 8192, 16384
MNT_DETACH, SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 2, 442, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
READ_ONLY = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}    # no glibc wrapper; the number is per architecture
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 24, 38, 36
CAPABILITY_VERSION_3 = 0x20080522
OS_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")    # the OS's own programs and libraries
NEW_ROOT = "/tmp"      # where the new root is built: the host /tmp is ours to cover (a runtime there is opened first)
DEVICES = ("null", "zero", "full", "random", "urandom")
DEVICE_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                "stderr": "/proc/self/fd/2"}


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


def mount_tmpfs(target, options):
    check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()),
          "mount " + target)


def bind(source, target, flags=0):
    check(libc.mount(source.encode(), target.encode(), None, MS_BIND | flags, None), f"bind {source}")


def set_mount_attributes(path, flags, add=0, remove=0):
    attr = MountAttr(set=add, clear=remove)
    check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr),
                       ctypes.sizeof(attr)), f"mount_setattr {path}")


# ---- namespaces: limits, a minimal root, no capabilities ----

def limit_namespaces(write_bytes):
    # Sysctls of OUR namespaces, set while /proc is still writable (it is read-only for the program). No nested
    # user namespaces: in one, the program would have mount rights again (e.g. for a tmpfs without our size cap).
    # At most ~300 processes, so a fork bomb stays small (kernel >= 6.14: pid_max is per namespace).
    write("/proc/sys/user/max_user_namespaces", "0")
    try:
        write("/proc/sys/kernel/pid_max", "301")     # the smallest value the kernel accepts
    except OSError:
        pass                                         # older kernel: only the timeout bounds forks
    # SysV shared memory, semaphores and message queues are memory outside any address space, and the IPC
    # namespace's defaults allow terabytes. Shared memory gets the budget of the program's /tmp, the rest a token.
    try:
        write("/proc/sys/kernel/shmmax", str(write_bytes))
        write("/proc/sys/kernel/shmall", str(write_bytes // os.sysconf("SC_PAGE_SIZE")))
        write("/proc/sys/kernel/shmmni", "16")
        write("/proc/sys/kernel/sem", "250 1000 32 16")  # per array, in all, per semop call, arrays
        write("/proc/sys/kernel/msgmni", "16")           # queues of at most 16 KiB each (msgmnb)
    except PermissionError:
        pass             # older kernels keep these from the namespace's root: SysV IPC stays uncapped, as before


def runtime_dirs():
    """The directories the program may see: the interpreter's prefixes, and the directories of the files it has
    mapped (its shared libraries), as real paths. A library of the OS brings the OS's whole tree (/usr, or /lib on
    a system without merged /usr): other libraries load from there later, and programs like `sleep` live there."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}      # a virtualenv, and its base
    with open("/proc/self/maps") as maps:
        for line in maps:                            # address, permissions, offset, device, inode, path
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and os.path.isfile(fields[5].rstrip("\n")):     # not [heap], not a memfd
                dirs.add(os.path.dirname(fields[5].rstrip("\n")))
    dirs = {os.path.realpath(path) for path in dirs if os.path.isdir(path)}
    dirs = {next((top for top in OS_DIRS if path == top or path.startswith(top + "/")), path) for path in dirs}
    if "/" in dirs:
        raise OSError(f"a runtime directory is the host's root ({sys.prefix=})")
    return sorted(path for path in dirs if not any(path.startswith(other + "/") for other in dirs))


def build_root(write_bytes, write_files):
    # The new root lives in memory and holds nothing but mount points: the runtime's directories (read-only, at
    # their real paths, wherever they live), the host's top-level symlinks (/lib -> usr/lib, ...), our /proc, a
    # minimal /dev and the program's size-capped /tmp. Host files (/root, /home, /etc, /var...) and sockets are
    # simply not there. The runtime is opened first: it may live under /tmp, which the new root covers.
    sources = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in runtime_dirs()}
    links = {name: os.readlink("/" + name) for name in os.listdir("/") if os.path.islink("/" + name)}
    mount_tmpfs(NEW_ROOT, "size=64k,nr_inodes=128,mode=0755")
    for name in ("proc", "dev", "tmp"):
        os.mkdir(f"{NEW_ROOT}/{name}")
    mount_tmpfs(f"{NEW_ROOT}/tmp", f"size={write_bytes},nr_inodes={write_files},mode=0700")
    for path, fd in sources.items():             # sorted: a runtime under /tmp goes into the program's /tmp
        os.makedirs(NEW_ROOT + path, exist_ok=True)
        bind(f"/proc/self/fd/{fd}", NEW_ROOT + path, MS_REC)
        set_mount_attributes(NEW_ROOT + path, AT_RECURSIVE, add=READ_ONLY)
        os.close(fd)
    for name, target in links.items():
        if not os.path.lexists(f"{NEW_ROOT}/{name}"):
            os.symlink(target, f"{NEW_ROOT}/{name}")
    set_up_dev(f"{NEW_ROOT}/dev", f"{NEW_ROOT}/tmp")
    check(libc.mount(b"/proc", f"{NEW_ROOT}/proc".encode(), None, MS_MOVE, None), "move /proc")
    set_mount_attributes(f"{NEW_ROOT}/proc", AT_RECURSIVE, add=READ_ONLY | MOUNT_ATTR_NOEXEC)   # sysctls stay
    set_mount_attributes(NEW_ROOT, 0, add=READ_ONLY)        # not recursive: the program's /tmp stays writable
    pivot_root(NEW_ROOT)


def pivot_root(new_root):
    """Make new_root our "/" and detach the old root: nothing of the host's tree is left in this mount namespace
    (chroot would leave it there, one escape away). pivot_root(".", ".") stacks the old root on the new one."""
    if os.uname().machine not in SYS_PIVOT_ROOT:
        raise OSError(f"pivot_root: syscall number unknown on {os.uname().machine}")
    os.chdir(new_root)
    check(libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def set_up_dev(dev, tmp):
    # A minimal, read-only /dev. The host's holds disks, KVM, consoles, terminals..., which a program that is uid 0
    # outside (a trainer run as root) could open. /dev/shm (multiprocessing needs it) shares the cap of /tmp.
    mount_tmpfs(dev, "size=16k,nr_inodes=32,mode=0755")
    for name in DEVICES:
        open(f"{dev}/{name}", "w").close()
        bind(f"/dev/{name}", f"{dev}/{name}")
        set_mount_attributes(f"{dev}/{name}", 0, add=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
                             remove=MOUNT_ATTR_NODEV)    # a device node: this one only
    for name, target in DEVICE_LINKS.items():
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm")
    set_mount_attributes(dev, 0, add=READ_ONLY)
    os.mkdir(f"{tmp}/.shm")
    bind(f"{tmp}/.shm", f"{dev}/shm")


def drop_all_capabilities():
    # Root inside, but with no capability left: it cannot undo the mounts above. The empty bounding set and
    # no_new_privs keep capabilities from coming back on exec of another program.
    last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last_cap + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability bounding set")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    check(libc.capset(ctypes.byref(CapHeader(CAPABILITY_VERSION_3, 0)), (CapData * 2)()), "capset")


def set_up_namespaces(workdir, write_bytes, write_files):
    limit_namespaces(write_bytes)
    build_root(write_bytes, write_files)
    os.mkdir(workdir)
    drop_all_capabilities()
    # Not dumpable: the program (same uid, no capabilities either) cannot ptrace us or open our /proc/1/fd.
    check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "set not dumpable")


# ---- limits only: we are the program's supervisor, and clean up behind it ----

def set_up_limits_only(trainer_pid, workdir):
    # A subreaper: processes whose parent dies (double forks, setsid() daemons) are handed to us, not to the
    # host's init, so we can find and end them. SIGTERM from the trainer (its timeout) or at the trainer's death
    # (even a SIGKILL) makes us end everything and remove the run directory.
    check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "become a subreaper")
    signal.signal(signal.SIGTERM, lambda number, frame: finish(None))
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0), "set the parent-death signal")
    if os.getppid() != trainer_pid:                  # the trainer died before the line above
        finish(None)
    os.mkdir(workdir, 0o700)


def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None                                  # gone already


def end_all_descendants():
    """SIGKILL every process below us, until none is left (each orphan it leaves is handed to us)."""
    while True:
        for pid in os.listdir("/proc"):
            if pid.isdigit() and parent_of(pid) == os.getpid():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:    # reap the dead; (0, 0) while some still live
                pass
        except ChildProcessError:
            return                                   # no child left, alive or dead


def remove_tree(path):
    """shutil.rmtree without importing shutil (~5 ms a run); links are removed, never followed."""
    for folder, dirs, files in os.walk(path, topdown=False):
        for entry in [os.path.join(folder, name) for name in dirs + files]:
            try:
                (os.rmdir if os.path.isdir(entry) and not os.path.islink(entry) else os.unlink)(entry)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


# ---- the init: fork the program, wait for it, report its status ----

def finish(exit_code):
    """Report the program's exit code (None: it did not end by itself), clean up, and end the run."""
    if exit_code is not None:
        os.write(STATUS_FD, str(exit_code).encode())
    if not NAMESPACES:
        end_all_descendants()
        remove_tree(WORKDIR)
    os._exit(0)                      # with namespaces, our exit as PID 1 makes the kernel kill all that is left


def become_the_program(code_fd):
    """In the forked child: become the program. Own process group, so kill(0, ...) reaches only its own."""
    os.close(STATUS_FD)
    os.setpgid(0, 0)
    if NAMESPACES:
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)      # ours again, as outside (fork inherited the init's 0)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)     # die with the supervisor
    os.chdir(WORKDIR)
    with os.fdopen(code_fd, "rb") as source, open("program.py", "wb") as program:
        program.write(source.read())
    sys.argv = [PROGRAM]
    sys.excepthook = hide_setup_frames
    runpy.run_path(PROGRAM, run_name="__main__")


def hide_setup_frames(kind, value, traceback):
    """Print tracebacks as if program.py had been run directly, without our frames on top."""
    while traceback is not None and traceback.tb_frame.f_code.co_filename != PROGRAM:
        traceback = traceback.tb_next
    sys.__excepthook__(kind, value.with_traceback(traceback), traceback)


MODE, WORKDIR, *NUMBERS = sys.argv[1:]
TRAINER_PID, CODE_FD, STATUS_FD, WRITE_BYTES, WRITE_FILES = map(int, NUMBERS)
NAMESPACES = MODE == "namespaces"
PROGRAM = os.path.join(WORKDIR, "program.py")
try:
    if NAMESPACES:
        set_up_namespaces(WORKDIR, WRITE_BYTES, WRITE_FILES)
    else:
        set_up_limits_only(TRAINER_PID, WORKDIR)
    # Objects that exist now are never collected in the child: otherwise its collections, at the latest the one
    # at exit, would touch every page it shares with us, and copying them costs ~25 ms a run (copy-on-write).
    gc.freeze()
    program_pid = os.fork()
except Exception as error:
    print(f"sqlm sandbox setup failed: {error!r}", file=sys.stderr)
    os._exit(125)            # fail closed: the program never runs without its isolation
if program_pid == 0:
    become_the_program(CODE_FD)     # and the interpreter exits as after any program
else:
    os.close(CODE_FD)
    while True:              # reap every orphan handed to us, until the program itself ends
        pid, status = os.waitpid(-1, 0)
        if pid == program_pid:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            finish(os.waitstatus_to_exitcode(status))
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

class SandboxUnavailable(SystemExit):
    """Namespaces are unavailable and $SQLM_REQUIRE_ISOLATION refuses the limits-only fallback. A SystemExit, so
    a command line that meets it ends with its one sentence instead of a traceback (sqlm.py checks at start)."""


_isolation_lock = threading.Lock()
_isolation_mode: str | None = None     # computed once per process by isolation()


def isolation() -> str:
    """NAMESPACES, or "limits only: <reason>". Probed once per process; warns once on fallback.

    Raises SandboxUnavailable instead of falling back when $SQLM_REQUIRE_ISOLATION is set.
    """
    global _isolation_mode
    with _isolation_lock:                # pass_fractions calls this from many threads at once
        if _isolation_mode is None:
            _isolation_mode = _probe_isolation()
            if _isolation_mode != NAMESPACES and not os.environ.get(REQUIRE_ISOLATION_ENV):
                _warn_limits_only(_isolation_mode)
        if _isolation_mode != NAMESPACES and os.environ.get(REQUIRE_ISOLATION_ENV):
            raise SandboxUnavailable(
                f"error: sandbox.py: {_isolation_mode}, and ${REQUIRE_ISOLATION_ENV} refuses to run model-written "
                "code without namespaces: run where unprivileged user namespaces work (Linux >= 5.12, util-linux "
                f"unshare, not blocked by AppArmor or a container profile), or unset ${REQUIRE_ISOLATION_ENV}.")
        return _isolation_mode


def _probe_isolation() -> str:
    """Run one tiny program in namespaces; it must be the child of PID 1 (our init) and exit cleanly."""
    if os.environ.get(LIMITS_ONLY_ENV):
        return f"limits only: forced by ${LIMITS_ONLY_ENV}"
    if not sys.platform.startswith("linux"):
        return f"limits only: namespaces need Linux, this is {sys.platform}"
    if _UNSHARE is None:
        return "limits only: util-linux `unshare` not found"
    result = _run_in_namespaces("import os\nprint(os.getpid(), os.getppid())", "", PROBE_TIMEOUT)
    if result.returncode == 0 and result.stdout.split() == ["2", "1"]:
        return NAMESPACES
    lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}, no message"]
    return f"limits only: namespaces unavailable ({lines[-1]})"


def _warn_limits_only(mode: str) -> None:
    bar = "!" * 100
    print(f"{bar}\nWARNING sandbox.py: {mode}\n"
          "Model-written programs run with resource limits only: they can read and write your files (a .pth\n"
          "file in site-packages runs at your next Python start), use the network, and signal this process.\n"
          "Do not train on an untrusted model like this outside a VM or a container without network and\n"
          f"secrets. Set {REQUIRE_ISOLATION_ENV}=1 to refuse to run without namespaces.\n"
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
        _set_limit(resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT)
        _set_limit(resource.RLIMIT_CORE, 0)   # no core dumps left on disk
        # SIGKILL this child when its parent dies, so a SIGKILLed trainer leaves no program behind.
        # The kernel means the parent THREAD: fine, the thread that starts a run waits for its end.
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != trainer_pid:       # the trainer died before the line above
            os.kill(os.getpid(), signal.SIGKILL)
    return prepare


def _stop(proc: subprocess.Popen, limits_only: bool) -> None:
    """End the run and reap the process we started: our init, or `unshare` above it.

    With namespaces, SIGKILLing unshare's process group is enough: unshare's death takes the init and
    the program's whole PID namespace along. Without, the supervisor first gets a SIGTERM and a moment
    to end what the program started (it may have left the process group) and to remove its directory.
    """
    if limits_only and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        _wait_for_exit(proc, STOP_GRACE)
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
    except (AttributeError, OSError):         # not Linux >= 5.3, or reaped already: fall back to polling
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


def _execute(limits_only: bool, code: str, stdin: str, timeout: float, workdir: str) -> RunResult:
    """Start our init on `code`, feeding it `stdin`; wait at most `timeout`, then end the run."""
    start = time.monotonic()
    # Output goes to files, not pipes: RLIMIT_FSIZE caps their size, and a grandchild holding the file open
    # can't make us block on a pipe. The code and the init's report of the exit status travel as open files.
    with _spooled(code) as code_file, tempfile.TemporaryFile() as status_file, _spooled(stdin) as fin, \
            tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        fds = (code_file.fileno(), status_file.fileno())
        init = [sys.executable, "-I", "-c", _INIT_CODE, "limits only" if limits_only else "namespaces", workdir,
                *map(str, (os.getpid(), *fds, WRITE_LIMIT_BYTES, WRITE_LIMIT_FILES))]
        proc = subprocess.Popen(
            init if limits_only else [_UNSHARE, *_UNSHARE_FLAGS, *init],
            cwd="/", stdin=fin, stdout=fout, stderr=ferr, pass_fds=fds,
            env={**BASE_ENV, "HOME": workdir},
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
            _stop(proc, limits_only)          # before reading, so nothing writes any more
        status_file.seek(0)
        # Empty when the setup failed before the program started. Without namespaces a program could write to
        # the file through /proc/<init>/fd, so a report that is not a number is not trusted.
        reported = status_file.read(32)
        return RunResult(
            stdout=_read_capped(fout),
            stderr=_read_capped(ferr),
            returncode=None if timed_out else int(reported) if reported.lstrip(b"-").isdigit() else proc.returncode,
            timed_out=timed_out,
            output_truncated=os.fstat(fout.fileno()).st_size > MAX_OUTPUT_BYTES,
            seconds=time.monotonic() - start,
        )


def _run_in_namespaces(code: str, stdin: str, timeout: float) -> RunResult:
    # The working dir exists only inside the program's own /tmp; the random name keeps programs
    # from relying on a fixed path.
    return _execute(False, code, stdin, timeout, workdir=f"/tmp/sqlm_run_{os.urandom(6).hex()}")


def _run_with_limits_only(code: str, stdin: str, timeout: float) -> RunResult:
    # The supervisor creates the dir and removes it; we remove it too, in case a program killed the supervisor.
    workdir = os.path.join(tempfile.gettempdir(), f"sqlm_run_{os.urandom(6).hex()}")
    try:
        return _execute(True, code, stdin, timeout, workdir)
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
