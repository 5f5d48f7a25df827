"""Hostile programs: each gets its right outcome, the evaluator survives, nothing leaks.

All of them run in one batch through one pool (so they also show that a hostile program
never disturbs the results of its neighbours); the tests then check each result and the
machine: no process of a program left, files outside the work dirs untouched, no network. As root and
as any other user (tests/test_sandbox_unprivileged.py runs it as nobody): the isolation is the same.
"""
import os
import socket
import tempfile
from pathlib import Path

import pytest

from bcoder.sandbox import AssertTest, CallTest, Sandbox, SandboxConfig, StdioTest, UnitTests, ValueTest

F = "\ndef f(x): return 2 * x\n"                 # a correct solution hostile programs append
DOUBLE = UnitTests([ValueTest("f(2)", 4)])
EVIL = "class Evil:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n" \
       "    def __bool__(self): return True\n    def __hash__(self): return 0\n"
MARKER = "bcoder-hostile-marker"

# In the checkout, unless this user may not write there (the suite run as another user); made by the
# fixture, not at import, so that a run that deselects this module leaves nothing there
HERE = Path(__file__).parent
VICTIM_DIR = Path(HERE if os.access(HERE, os.W_OK) else tempfile.gettempdir()) / f"victim-{os.urandom(6).hex()}"
VICTIM = VICTIM_DIR / "victim.txt"
LISTENER = socket.socket()
LISTENER.bind(("127.0.0.1", 0))
LISTENER.listen()
LISTENER.setblocking(False)
PORT = LISTENER.getsockname()[1]

# name: (program, tests, outcome)
HOSTILE = {
    "infinite_loop": ("while True: pass" + F, DOUBLE, "runtime_error"),
    "signal_swallowing_loop": ("import signal\nfor s in signal.valid_signals():\n    try: signal.signal(s, signal.SIG_IGN)\n"
                               "    except (OSError, ValueError): pass\nwhile True: pass" + F, DOUBLE, "runtime_error"),
    "sleep_forever": ("import time\ntime.sleep(1000)" + F, DOUBLE, "runtime_error"),
    # The program's processes share the CPU time limit (1.5 s): RLIMIT_CPU alone (2 s per process, rounded
    # up) gave a process that ignores SIGXCPU a second more (SIGKILL at 3 s), and each fork a budget of its own.
    "ignore_sigxcpu": ("import signal, time\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                       "while time.process_time() < 2.4: pass" + F, DOUBLE, "runtime_error"),
    "cpu_in_forked_parts": ("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n"
                            "        while time.process_time() < 0.8: pass\n        os._exit(0)\n"
                            "for _ in range(3): os.wait()" + F, DOUBLE, "runtime_error"),
    "loop_in_tested_function": ("def f(x):\n    while True: pass", DOUBLE, "runtime_error"),
    "fork_bomb": ("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass" + F, DOUBLE, "runtime_error"),
    "thread_bomb": ("import threading, time\nfor _ in range(10000):\n    threading.Thread(target=time.sleep, args=(100,)).start()" + F,
                    DOUBLE, "runtime_error"),
    "memory_bomb": ("x = bytearray(16 << 30)" + F, DOUBLE, "runtime_error"),
    "growing_memory_bomb": ("x = []\nwhile True: x.append(' ' * (1 << 24))" + F, DOUBLE, "runtime_error"),
    "deep_recursion": ("def g(n): return g(n + 1)\ng(0)" + F, DOUBLE, "runtime_error"),
    "stack_overflow_segfault": ("import sys\nsys.setrecursionlimit(10 ** 8)\ndef g(n): return g(n + 1) + 1\ng(0)" + F,
                                DOUBLE, "runtime_error"),
    "ctypes_segfault": ("import ctypes\nctypes.string_at(0)" + F, DOUBLE, "runtime_error"),
    "huge_output_then_correct": ("print('x' * (8 << 20))" + F, DOUBLE, "passed"),
    "endless_output": ("while True: print('spam' * 1000)" + F, DOUBLE, "runtime_error"),
    "sys_exit_0": ("import sys\nsys.exit(0)" + F, DOUBLE, "runtime_error"),
    "os_exit_0": ("import os\nos._exit(0)" + F, DOUBLE, "runtime_error"),
    "quit": ("quit()" + F, DOUBLE, "runtime_error"),
    "raise_system_exit": ("raise SystemExit" + F, DOUBLE, "runtime_error"),
    "exit_inside_tested_function": ("def f(x):\n    import os\n    os._exit(0)", DOUBLE, "runtime_error"),
    "atexit_hook": ("import atexit, os\natexit.register(lambda: os._exit(0))\ndef f(x): return 0", DOUBLE, "failed"),
    "eq_always_true_value": (EVIL + "def f(x): return Evil()", DOUBLE, "failed"),
    "eq_always_true_assert": (EVIL + "def f(x): return Evil()", UnitTests([AssertTest("assert f(2) == 4")]), "failed"),
    "bool_always_true_assert": (EVIL + "def f(x): return Evil()", UnitTests([AssertTest("assert f(2)")]), "runtime_error"),
    "eq_always_true_apps_call": (EVIL + "def f(x): return Evil()", UnitTests([CallTest("f", [2], 4)], apps=True), "failed"),
    "str_subclass_eq": ("class S(str):\n    def __eq__(self, o): return True\n    __hash__ = str.__hash__\n"
                        "def f(x): return S('no')", UnitTests([ValueTest("f(2)", "yes")]), "failed"),
    "rebind_test_helper": ("def f(x):\n    globals()['__plain__'] = lambda v: True\n    return 1",
                           UnitTests([AssertTest("assert f(2) == 4")]), "failed"),
    "patch_builtins": ("import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\n"
                       "def f(x): return Evil()\n" + EVIL, DOUBLE, "runtime_error"),
    "forge_result_channel": ("import os\nos.write(3, b'[\"probe\", 0, [\"ok\", 4]]\\n[\"done\"]\\n')\nos._exit(0)" + F,
                             DOUBLE, "runtime_error"),
    # Its status lines are its to write: one nested past the JSON decoder's recursion limit, after a right answer
    "nested_status_line": ("import os\nprint(2 * int(input()))\nos.write(3, b'[' * 100000 + b'\\n')",
                           UnitTests([StdioTest("2\n", "4\n")]), "passed"),
    "close_result_channel": ("import os\nos.close(3)" + F, DOUBLE, "runtime_error"),
    # Its parent, the worker, is root's (as root) or its PID namespace's init (without): no signal reaches it.
    "kill_parent": ("import os, signal\ntry: os.kill(os.getppid(), signal.SIGKILL)\nexcept PermissionError: pass" + F,
                    DOUBLE, "passed"),
    # Without root it shares the worker's uid: of the signals a PID namespace's init gets from inside, only
    # those it handles arrive (Python handles SIGINT), and one would end the worker (a HarnessError).
    "signal_parent": ("import os, signal\nfor s in signal.valid_signals() - {signal.SIGKILL}:\n"
                      "    try: os.kill(os.getppid(), s)\n    except PermissionError: pass" + F, DOUBLE, "passed"),
    "kill_own_process_group": ("import os, signal\nos.killpg(0, signal.SIGKILL)" + F, DOUBLE, "runtime_error"),
    "kill_everything_allowed": ("import os, signal\ntry: os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError: pass" + F,
                                DOUBLE, "passed"),  # it sees no process to kill
    "daemonised_child": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                         "        time.sleep(1000)\n    os._exit(0)" + F, DOUBLE, "passed"),
    "child_in_own_process_group": ("import os, time\nif os.fork() == 0:\n    os.setpgid(0, 0)\n    while True: pass" + F,
                                   DOUBLE, "passed"),
    "network_outside": ("import socket\ndef f(x):\n    try:\n        socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
                        "        return 'connected'\n    except OSError:\n        return 'blocked'",
                        UnitTests([ValueTest("f(0)", "blocked")]), "passed"),
    "network_loopback": (f"import socket\ndef f(x):\n    try:\n        socket.create_connection(('127.0.0.1', {PORT}), timeout=1)\n"
                         "        return 'connected'\n    except OSError:\n        return 'blocked'",
                         UnitTests([ValueTest("f(0)", "blocked")]), "passed"),
    "change_files_outside_workdir": (
        f"import os\ndef f(x):\n    denied = 0\n    for attempt in (lambda: os.remove({str(VICTIM)!r}),\n"
        f"                    lambda: open({str(VICTIM)!r}, 'a').write('pwned'),\n"
        f"                    lambda: os.chmod({str(VICTIM)!r}, 0o777),\n"
        f"                    lambda: open({str(VICTIM_DIR / 'new.txt')!r}, 'w').write('x'),\n"
        f"                    lambda: open({str(Path(__file__))!r}, 'a').write('x')):\n"
        # Not found counts as denied: a checkout under /tmp is hidden by the sandbox's private /tmp.
        "        try: attempt()\n        except (PermissionError, FileNotFoundError): denied += 1\n    return denied",
        UnitTests([ValueTest("f(0)", 5)]), "passed"),
    "files_in_workdir_and_tmp": (f"import os\nopen('local.txt', 'w').write('ok')\nopen('/tmp/{MARKER}', 'w').write('x')\n"
                                 f"open('/dev/shm/{MARKER}', 'w').write('x')" + F, DOUBLE, "passed"),
    "read_stdin": ("import sys\ndef f(x): return len(sys.stdin.read())", UnitTests([ValueTest("f(0)", 0)]), "passed"),
    "input_without_stdin": ("def f(x): return input()", DOUBLE, "runtime_error"),
    "null_byte_source": ("def f(x): return 2 * x\0", DOUBLE, "compile_error"),
    "deeply_nested_source": ("x = " + "(" * 5000 + ")" * 5000 + F, DOUBLE, "compile_error"),
    "huge_file": ("open('big', 'wb').write(b'x' * (64 << 20))" + F, DOUBLE, "runtime_error"),
}


@pytest.fixture(scope="module")
def results():
    VICTIM_DIR.mkdir(mode=0o700)
    VICTIM.write_text("original")
    VICTIM.chmod(0o644)
    try:                                  # (removed whatever happens: it is made in the checkout)
        with Sandbox(SandboxConfig(timeout=1.5, memory_limit=1 << 30), workers=2) as box:
            assert box.isolated
            programs, tests, _ = zip(*HOSTILE.values())
            outcomes = dict(zip(HOSTILE, box.run(programs, tests)))
            after = box.run(["def f(x): return 2 * x"] * 4, DOUBLE)     # the pool still works
            # Below each worker process: the worker proper (the init of its PID namespace), and nothing else
            # (another pool on the machine may use the same uids).
            workers = {slot.worker.process.pid for slot in box.slots}
            leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _descends_from(p, workers)
                         and _parent(p) not in workers]
            pids = [process.process.pid for slot in box.slots for process in (slot.worker, slot.judge)]
        yield outcomes, after, leftovers, pids
    finally:
        VICTIM.unlink(missing_ok=True)
        VICTIM_DIR.rmdir()
        LISTENER.close()


def test_there_are_at_least_30_hostile_programs(results):
    """At least 30 different cases (no two alike in program and tests), none of them just the correct
    solution F that many append to their attack, and every one of them ran in the one batch and came back
    with its result (which test_hostile_program_gets_its_outcome then checks)."""
    cases = [(program, repr(tests)) for program, tests, _ in HOSTILE.values()]
    assert len(set(cases)) == len(cases) >= 30
    assert all(program.replace(F, "").strip() not in ("", F.strip()) for program, _ in cases)
    assert list(results[0]) == list(HOSTILE) and all(result.outcome for result in results[0].values())


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_program_gets_its_outcome(results, name):
    result = results[0][name]
    assert result.outcome == HOSTILE[name][2], (result.error_type, result.message)


def test_the_pool_survives(results):
    assert [r.outcome for r in results[1]] == ["passed"] * 4


def test_no_process_of_a_program_survives(results):
    assert results[2] == []


def test_no_process_of_ours_survives(results):
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == os.getpid()]
    assert children == []


def _descends_from(proc, pids):
    parent = _parent(proc)
    while parent not in (None, 0, 1):
        if parent in pids:
            return True
        parent = _parent(Path(f"/proc/{parent}"))
    return False


def _parent(proc):
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def test_files_outside_the_workdir_are_untouched(results):
    assert VICTIM.read_text() == "original" and oct(VICTIM.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in VICTIM_DIR.iterdir()) == ["victim.txt"]
    assert not Path(f"/tmp/{MARKER}").exists() and not Path(f"/dev/shm/{MARKER}").exists()
    assert [path for pid in results[3] for path in Path("/tmp").glob(f"bcoder-sandbox-{pid}-*")] == []


def test_loopback_server_saw_no_connection(results):
    with pytest.raises(BlockingIOError):
        LISTENER.accept()


def test_output_is_capped(results):
    assert len(results[0]["huge_output_then_correct"].stdout) <= 1 << 20
    assert len(results[0]["endless_output"].stdout) <= 1 << 20


def test_timeouts_are_reported_as_such(results):
    for name in ("infinite_loop", "signal_swallowing_loop", "sleep_forever", "loop_in_tested_function"):
        assert results[0][name].error_type == "Timeout", name
