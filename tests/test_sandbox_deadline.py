"""Deadlines: a judge the program's answers stall is killed and replaced from outside, the program
scores a timeout and the run goes on; time limits count CPU time, so a loaded machine gives the
same outcomes as a quiet one."""
import os
import subprocess
import sys

import pytest
from conftest import run_in_order

from bcoder.sandbox import AssertTest, Sandbox, SandboxConfig, StdioTest, UnitTests, ValueTest

# 199k ints that all hash to 0 (CPython hashes an int modulo 2**61 - 1): the test's set() compares
# each with all the others, some 2e10 comparisons inside C code, where no signal handler runs.
COLLIDING = "def f():\n    return [k * (2 ** 61 - 1) for k in range(1, 199_000)]"
HONEST_SET = "def f():\n    return [0, 0]"
# Test code whose bare `except:` swallows the judge's own timeout (a one-shot timer) and goes on.
SWALLOWING = ("done = False\nwhile not done:\n    try:\n        for _ in range(f()):\n            pass\n"
              "        done = True\n    except:\n        pass")
# A Python loop in the test's own code, which the judge's CPU timer stops.
LONG_LOOP = "def f():\n    return 10 ** 12"


@pytest.fixture(scope="module")
def box():
    with Sandbox(SandboxConfig(timeout=1), workers=1) as box:
        yield box


@pytest.mark.parametrize("stalling, honest, tests", [
    (COLLIDING, HONEST_SET, UnitTests([ValueTest("len(set(f()))", 1)])),
    (LONG_LOOP, "def f():\n    return 3", UnitTests([AssertTest(SWALLOWING), ValueTest("1", 1)])),
], ids=["hash_collisions_in_c", "timer_swallowed_by_test_code"])
def test_a_stalled_judge_is_replaced_and_the_program_times_out(box, stalling, honest, tests):
    stalled, after = run_in_order(box, [stalling, honest], tests)      # one slot: the same slot judges both
    assert (stalled.outcome, stalled.error_type) == ("runtime_error", "Timeout")
    assert {t.status for t in stalled.tests} == {"timeout"}
    assert after.outcome == "passed"


def test_the_judges_timer_stops_its_own_long_test_code(box):
    tests = UnitTests([ValueTest("f() > 0", True), AssertTest("for _ in range(f()): pass"), ValueTest("f()", 10 ** 12)])
    timed_out, after = run_in_order(box, [LONG_LOOP] * 2, [tests, UnitTests([ValueTest("f()", 10 ** 12)])])
    assert timed_out.outcome == "runtime_error"
    assert [t.status for t in timed_out.tests] == ["passed", "timeout", "not_run"]
    assert after.outcome == "passed"


def test_programs_get_their_cpu_time_across_stdin_runs(box):
    """The runs of a standard-input program share its CPU time: each input here costs about a third
    of it, so a program with ten inputs times out although no single run does."""
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\nprint(input())"
    one, ten = box.run([burn, burn], [UnitTests([StdioTest("1\n", "1\n")]), UnitTests([StdioTest("1\n", "1\n")] * 10)])
    assert one.outcome == "passed"
    assert ten.outcome == "runtime_error" and ten.error_type == "Timeout"
    statuses = [t.status for t in ten.tests]
    assert statuses.count("timeout") == 1 and statuses.index("timeout") < 5 and statuses[-1] == "not_run"


# Hostile programs of tests/test_sandbox_hostile.py whose outcome could depend on time (name: program,
# outcome), a judge stalled by hash collisions, and an honest program that computes for a third of its
# CPU time (which a wall-clock limit of `timeout` fails beside the hogs): the same outcomes beside CPU
# hogs, two per core, as on a quiet machine.
F = "\ndef f(x): return 2 * x\n"
BURN = "import time\nend = time.process_time() + {}\nwhile time.process_time() < end: pass\n"
TIMED = {
    "honest_a_third_of_the_time": (BURN.format(0.5) + F, "passed"),
    "infinite_loop": ("while True: pass" + F, "runtime_error"),
    "signal_swallowing_loop": ("import signal\nfor s in signal.valid_signals():\n    try: signal.signal(s, signal.SIG_IGN)\n"
                               "    except (OSError, ValueError): pass\nwhile True: pass" + F, "runtime_error"),
    "sleep_forever": ("import time\ntime.sleep(1000)" + F, "runtime_error"),
    "loop_in_tested_function": ("def f(x):\n    while True: pass", "runtime_error"),
    "thread_bomb": ("import threading, time\nfor _ in range(10000):\n    threading.Thread(target=time.sleep, args=(100,)).start()" + F,
                    "runtime_error"),
    "deep_recursion": ("def g(n): return g(n + 1)\ng(0)" + F, "runtime_error"),
    "daemonised_child": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                         "        time.sleep(1000)\n    os._exit(0)" + F, "passed"),
    "child_in_own_process_group": ("import os\nif os.fork() == 0:\n    os.setpgid(0, 0)\n    while True: pass" + F, "passed"),
    "huge_output_then_correct": ("print('x' * (8 << 20))" + F, "passed"),
    "endless_output": ("while True: print('spam' * 1000)" + F, "runtime_error"),
    "hash_collisions_for_the_judge": ("def f(x):\n    return [k * (2 ** 61 - 1) for k in range(1, 199_000)]",
                                      "runtime_error"),
}
TIMED_TESTS = {"hash_collisions_for_the_judge": UnitTests([ValueTest("len(set(f(2)))", 1)])}


def outcomes():
    with Sandbox(SandboxConfig(timeout=1.5), workers=2) as box:
        results = box.run([program for program, _ in TIMED.values()],
                          [TIMED_TESTS.get(name, UnitTests([ValueTest("f(2)", 4)])) for name in TIMED])
    return {name: result.outcome for name, result in zip(TIMED, results)}


def test_outcomes_beside_cpu_hogs_are_those_of_a_quiet_machine():
    quiet = outcomes()
    assert quiet == {name: outcome for name, (_, outcome) in TIMED.items()}
    # Each in a session of its own: autogroup scheduling would weigh hogs sharing one as a single process.
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(2 * (os.cpu_count() or 1))]
    try:
        loaded = outcomes()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert loaded == quiet
