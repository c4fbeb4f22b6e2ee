"""Tests for sandbox.py: normal runs, output matching, and hostile programs."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sandbox  # noqa: E402
from sandbox import pass_fraction, pass_fractions, run_program  # noqa: E402

ADD_TWO = "a, b = map(int, input().split())\nprint(a + b)\n"


def _is_gone(pid: int, wait_seconds: float = 2.0) -> bool:
    """True once `pid` no longer runs. A zombie (State Z, waiting for init to reap it) counts as gone."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.startswith("State:") and "Z" in line.split()[1] for line in f):
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# ---- normal behaviour -------------------------------------------------------

def test_reads_stdin_and_prints():
    result = run_program(ADD_TWO, stdin="2 3\n")
    assert result.stdout == "5\n"
    assert result.returncode == 0
    assert result.timed_out is False
    assert result.output_truncated is False


def test_matching_ignores_trailing_whitespace_and_blank_lines():
    code = "print('1 2 3   ')\nprint('4')\nprint()\nprint('  ')\n"
    assert pass_fraction(code, [("", "1 2 3\n4")]) == 1.0
    assert pass_fraction(code, [("", "1 2 3\r\n4\r\n")]) == 1.0
    assert sandbox.normalize_output("a \r\nb\t\n\n\n") == "a\nb"


def test_wrong_answer_scores_zero():
    assert pass_fraction(ADD_TWO, [("2 3", "6")]) == 0.0
    assert pass_fraction("print(' 5')", [("", "5")]) == 0.0  # leading space still matters


def test_three_of_five_pass():
    tests = [("1 1", "2"), ("2 2", "4"), ("3 3", "6"), ("4 4", "9"), ("5 5", "11")]
    assert pass_fraction(ADD_TWO, tests) == 0.6


def test_empty_tests_score_zero():
    assert pass_fraction(ADD_TWO, []) == 0.0


def test_broken_programs_score_zero_without_raising():
    tests = [("2 3", "5")]
    assert pass_fraction("def broken(:\n", tests) == 0.0                         # syntax error
    assert pass_fraction("raise ValueError('boom')", tests) == 0.0               # uncaught exception
    assert pass_fraction("import sys\nsys.exit(3)", tests) == 0.0                # non-zero exit
    assert pass_fraction("print(5)\nimport sys\nsys.exit(3)", tests) == 0.0      # right output, bad exit
    assert pass_fraction("import os\nos.kill(os.getpid(), 9)", tests) == 0.0     # crash by signal
    assert pass_fraction("print(5)\nimport sys\nsys.exit(0)", tests) == 1.0      # clean exit is fine


# ---- hostile programs ------------------------------------------------------

def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_program("while True: pass", timeout=1.0)
    elapsed = time.monotonic() - start
    assert result.timed_out is True
    assert result.returncode is None
    assert elapsed < 1.0 + 2.0


def test_memory_hog_fails_quickly():
    start = time.monotonic()
    big_alloc = run_program("x = bytearray(4 * 1024**3)\nprint('allocated')")
    growth = run_program("a = []\nwhile True:\n    a.append(' ' * 10**6)")
    assert time.monotonic() - start < 5.0
    for result in (big_alloc, growth):
        assert result.returncode != 0
        assert "MemoryError" in result.stderr or result.returncode is None
    assert "allocated" not in big_alloc.stdout


def test_child_process_that_outlives_parent_is_killed():
    code = "import subprocess\np = subprocess.Popen(['sleep', '30'])\nprint(p.pid)\n"
    result = run_program(code)
    assert result.returncode == 0
    assert _is_gone(int(result.stdout))


def test_double_fork_daemon_is_killed():
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"              # child
        "    daemon = os.fork()\n"
        "    if daemon == 0:\n"              # grandchild: the 'daemon', stays in the group
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    print(daemon, flush=True)\n"
        "    os._exit(0)\n"                  # child exits, daemon is reparented to init
        "os.wait()\n"
    )
    result = run_program(code)
    assert result.returncode == 0
    assert _is_gone(int(result.stdout))


def test_huge_output_is_capped():
    start = time.monotonic()
    flood = run_program("while True: print('x' * 1000)")
    single = run_program("print('y' * (50 * 1024**2))")
    assert time.monotonic() - start < 8.0
    for result in (flood, single):
        assert result.output_truncated is True
        assert len(result.stdout) <= sandbox.MAX_OUTPUT_BYTES
    assert pass_fraction("while True: print('x' * 1000)", [("", "x")]) == 0.0


def test_files_are_written_only_in_a_temp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "import os\nopen('out.txt', 'w').write('hi')\nprint(os.getcwd())\n"
    result = run_program(code)
    assert result.returncode == 0
    run_dir = result.stdout.strip()
    assert run_dir != str(tmp_path)
    assert not os.path.exists(run_dir)            # removed after the run
    assert not (tmp_path / "out.txt").exists()


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("SQLM_SECRET", "x")
    result = run_program("import os\nprint(os.environ.get('SQLM_SECRET'))")
    assert result.stdout.strip() == "None"


# ---- batches ---------------------------------------------------------------

def test_pass_fractions_runs_a_batch_in_order():
    codes = [ADD_TWO, None, "print(0)", "while True: pass", ADD_TWO]
    tests = [[("1 2", "3"), ("2 2", "4")],
             [("1 2", "3")],
             [("1 2", "3"), ("0 0", "0")],
             [("1 2", "3")],
             [("1 2", "4")]]
    start = time.monotonic()
    scores = pass_fractions(codes, tests, timeout=1.0)
    assert scores == [1.0, 0.0, 0.5, 0.0, 0.0]
    assert time.monotonic() - start < 5.0
