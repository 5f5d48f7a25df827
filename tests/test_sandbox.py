"""The sandbox API: outcomes and rewards, test formats, result order, limits, reuse."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_in_order

from bcoder.sandbox import (
    AssertTest,
    CallTest,
    Sandbox,
    SandboxConfig,
    StdioTest,
    UnitTests,
    ValueTest,
    _process,
    pool,
    run_programs,
)

DOUBLE = UnitTests([ValueTest("f(2)", 4), AssertTest("assert f(3) == 6")])


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout=2), workers=2) as box:
        yield box


@pytest.mark.parametrize("program, outcome, reward, statuses", [
    ("def f(x): return 2 * x", "passed", 1.0, ["passed", "passed"]),
    ("def f(x): return 4", "failed", -0.3, ["passed", "failed"]),
    ("def f(x): return x / 0", "runtime_error", -0.6, ["error", "error"]),
    ("def f(x) return x", "compile_error", -1.0, ["not_run", "not_run"]),
    ("raise ValueError('at import')\ndef f(x): return 2 * x", "runtime_error", -0.6, ["not_run", "not_run"]),
    ("def f(x):\n    while True: pass", "runtime_error", -0.6, ["timeout", "not_run"]),
])
def test_outcomes_and_rewards(sandbox, program, outcome, reward, statuses):
    [result] = sandbox.run([program], DOUBLE)
    assert (result.outcome, result.reward) == (outcome, reward)
    assert [t.status for t in result.tests] == statuses
    assert (result.tests_passed, result.tests_total) == (statuses.count("passed"), 2)


def test_error_details(sandbox):
    [result] = sandbox.run(["def f(x):\n    return {}[x]"], DOUBLE)
    assert result.error_type == "KeyError" and "program line 2" in result.message
    [result] = sandbox.run(["def f(x): return [x]"], UnitTests([ValueTest("f(1)", (1,))]))
    assert result.tests[0].message == "expected (1,), got [1]"   # types count: a list is no tuple


def test_results_keep_input_order_across_workers(sandbox):
    programs = [f"import time\ntime.sleep({0.05 * (i % 3)})\ndef f(x): return {i}" for i in range(12)]
    results = sandbox.run(programs, [UnitTests([ValueTest("f(0)", i)]) for i in range(12)])
    assert [r.outcome for r in results] == ["passed"] * 12


def test_programs_run_in_an_order_nobody_can_predict():
    """So that no program knows which runs after it on its slot (the channels no sandbox closes, as time,
    then reach a stranger's program). Each program prints when it started; results stay in input order."""
    with Sandbox(SandboxConfig(timeout=2), workers=1) as box:
        results = box.run([f"import time\nprint(time.monotonic_ns(), {i})" for i in range(30)],
                          UnitTests([StdioTest("", "0")]))
    started = [int(r.stdout.split()[0]) for r in results]
    assert [int(r.stdout.split()[1]) for r in results] == list(range(30))
    assert started != sorted(started)     # (in input order by chance: one in 30!)


def test_one_broken_case_does_not_shift_others(sandbox):
    suites = [DOUBLE, UnitTests([ValueTest("f(", 1)]), DOUBLE]   # an expression that does not parse
    results = sandbox.run(["def f(x): return 2 * x"] * 3, suites)
    assert [r.outcome for r in results] == ["passed", "runtime_error", "passed"]


def test_a_program_interrupts_itself_as_in_plain_python(sandbox):
    """The worker ignores SIGINT (a program could otherwise end it); its programs get Python's handler back."""
    program = ("import os, signal\ndef f(x):\n    try:\n        os.kill(os.getpid(), signal.SIGINT)\n"
               "        signal.pause()\n    except KeyboardInterrupt:\n        return 'interrupted'")
    [result] = sandbox.run([program], UnitTests([ValueTest("f(0)", "interrupted")]))
    assert result.outcome == "passed", result.tests


def test_a_program_killed_by_a_real_time_signal_crashed_and_its_worker_did_not():
    with Sandbox(SandboxConfig(timeout=2), workers=1) as box:
        worker = box.slots[0].worker.process.pid
        [result] = box.run(["import os\ndef f(x):\n    os.kill(os.getpid(), 40)"], DOUBLE)   # SIGRTMIN + 6: no name
        assert box.slots[0].worker.process.pid == worker
    assert (result.outcome, result.error_type) == ("runtime_error", "signal 40")


def test_the_worker_names_every_signal_as_python_does():
    """The worker's loop (C) names the signal that killed a program: as signal.Signals does, for all 64."""
    for number in range(1, 65):
        try:
            expected = signal.Signals(number).name
        except ValueError:
            expected = f"signal {number}"
        assert _process.signal_name(number) == expected


def test_a_run_left_by_an_exception_leaves_the_pool_usable(monkeypatch):
    """A slot whose replies were not all read when run() was left is restarted: the rest of its worker's
    reply would otherwise be read as the next message, and the pool hang."""
    with Sandbox(SandboxConfig(timeout=2), workers=2) as box:
        def fail(*_):
            raise RuntimeError("reading a report")
        with monkeypatch.context() as patch:
            patch.setattr(pool, "read_report", fail)
            with pytest.raises(RuntimeError, match="reading a report"):
                box.run(["def f(x): return 2 * x"] * 4, DOUBLE)
        assert [slot.job for slot in box.slots] == [None, None]
        assert [r.outcome for r in box.run(["def f(x): return 2 * x"] * 4, DOUBLE)] == ["passed"] * 4


def test_value_comparison_follows_python_for_builtin_types(sandbox):
    cases = [ValueTest("1", 1.0), ValueTest("{1: [2, (3,)]}", {1: [2, (3,)]}), ValueTest("frozenset({1})", {1}),
             ValueTest("b'x'", b"x"), ValueTest("2 ** 70000 > 0", True), ValueTest("1j", 1j),
             ValueTest("__import__('collections').Counter('aab')", {"a": 2, "b": 1}),
             ValueTest("float('inf')", float("inf"))]
    [result] = sandbox.run(["pass"], UnitTests(cases))
    assert result.outcome == "passed", result.tests


def test_setup_runs_after_program_and_before_tests(sandbox):
    tests = UnitTests([ValueTest("size(root)", 2)], setup="root = Node(Node(None))")
    program = "class Node:\n    def __init__(self, child): self.child = child\n" \
              "def size(n): return 0 if n is None else 1 + size(n.child)"
    assert sandbox.run([program], tests)[0].outcome == "passed"


def test_humaneval_style_check(sandbox):
    tests = UnitTests([AssertTest("check(add)")],
                      setup="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n")
    results = sandbox.run(["def add(a, b): return a + b", "def add(a, b): return a * b + 2"], tests)
    assert [r.outcome for r in results] == ["passed", "failed"]


def test_program_objects_cross_by_reference_and_functions_do_not_cross(sandbox):
    """A program's object stays in its process (the test can pass it back, call it, set and read its
    attributes); a function of the test cannot be passed to the program: that test is an error."""
    program = ("class Pair:\n    def __init__(self, a, b): self.a, self.b = a, b\n    def total(self): return self.a + self.b\n"
               "def longest(pairs): return max(p.b - p.a for p in pairs)\ndef apply(f, x): return f(x)\n")
    tests = UnitTests([ValueTest("longest([Pair(1, 5), Pair(2, 3)])", 4), AssertTest("p = Pair(1, 2)\np.b = 7\nassert p.total() == 8"),
                       AssertTest("assert Pair(1, 2) != Pair(1, 2)"), ValueTest("apply(len, 'abc')", 3),
                       ValueTest("apply(lambda x: x + 1, 1)", 2)], names=("Pair", "longest", "apply"))
    [result] = sandbox.run([program], tests)
    assert [t.status for t in result.tests] == ["passed", "passed", "passed", "passed", "error"]
    assert result.tests[4].error_type == "UnservableTest" and result.outcome == "runtime_error"


def test_call_based_apps(sandbox):
    tests = UnitTests([CallTest("pair", [1], [1, 2]), CallTest("pair", [3], [[3, 4]])], apps=True)
    plain = "def pair(x): return (x, x + 1)"                   # tuples read as lists
    leetcode = "class Solution:\n    def pair(self, x: int) -> List[int]:\n        return [x, x + 1]"
    wrong = "def pair(x): return [x]"
    results = sandbox.run([plain, leetcode, wrong], tests)
    assert [r.outcome for r in results] == ["passed", "passed", "failed"]


def test_stdin_programs(sandbox):
    tests = UnitTests([StdioTest("3\n", "6\n"), StdioTest("5\n", "10")], apps=True)
    programs = ["print(int(input()) * 2)",
                "import sys\nprint(int(sys.stdin.read()) * 2, end='  \\n\\n')",   # trailing blanks ignored
                "n = int(open(0).read())\nprint(n * 2)\nexit()",
                "n = int(input())\nif n:\n    print(2 * n)\n    return\nprint(0)",   # APPS runs it as a function
                "print(int(input()) * 2 + 1)",
                "print(int(input()) * 2)\nimport sys\nsys.exit(3)"]
    results = sandbox.run(programs, tests)
    assert [r.outcome for r in results] == ["passed"] * 4 + ["failed", "runtime_error"]


def test_stdin_float_tolerance_and_runs_each_test_fresh(sandbox):
    tests = UnitTests([StdioTest("1\n", "0.3333333333\n"), StdioTest("2\n", "0.6666666667")], apps=True)
    [result] = sandbox.run(["seen = []\nseen.append(1)\nassert len(seen) == 1\nprint(int(input()) / 3)"], tests)
    assert result.outcome == "passed"


def test_stdout_is_captured_and_capped():
    results = run_programs(["print('hello')\ndef f(x): return 2 * x", "print('x' * 5000)\ndef f(x): return 2 * x"],
                           DOUBLE, workers=1, output_limit=1000)
    assert results[0].stdout == "hello\n"
    assert len(results[1].stdout) == 1000 and results[1].outcome == "passed"


def test_memory_limit_is_a_runtime_error():
    [result] = run_programs(["x = bytearray(300 << 20)\ndef f(x): return 2 * x"], DOUBLE, workers=1,
                            memory_limit=256 << 20)
    assert result.outcome == "runtime_error" and result.error_type == "MemoryError"


def test_peak_memory_and_time_are_reported(sandbox):
    [result] = sandbox.run(["x = bytearray(50 << 20)\ndef f(x): return 2 * x"], DOUBLE)
    assert result.peak_memory > 50 << 20 and result.seconds > 0


def test_bad_arguments_are_clear_errors(sandbox):
    with pytest.raises(ValueError, match="2 programs but 1 test suites"):
        sandbox.run(["a", "b"], [DOUBLE])
    with pytest.raises(ValueError, match="cannot be mixed"):
        UnitTests([StdioTest("", ""), ValueTest("1", 1)])
    for name in ("f(x)", "a\0b", "", 3):
        with pytest.raises(ValueError, match="UnitTests.names: .* must be identifiers"):
            UnitTests([ValueTest("f(1)", 1)], names=("g", name))
    with pytest.raises(ValueError, match="program 1: its UnitTests has no test cases"):
        sandbox.run(["a", "b"], [DOUBLE, UnitTests()])
    with pytest.raises(TypeError, match="program 0: expected str and UnitTests"):
        sandbox.run([b"def f(x): return x"], DOUBLE)
    for workers in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be a positive integer"):
            Sandbox(workers=workers)
    for timeout in (0, -1, float("nan"), float("inf"), "10"):
        with pytest.raises(ValueError, match="timeout must be > 0"):
            SandboxConfig(timeout=timeout)
    with pytest.raises(ValueError, match="memory_limit must be a positive integer"):
        SandboxConfig(memory_limit=0)
    with pytest.raises(TypeError, match="must be plain data"):
        sandbox.run(["x = 1"], UnitTests([ValueTest("x", object())]))


@pytest.mark.parametrize("flag, error", [("--k 0", "--k values must be >= 1"), ("--k 1,x", "comma-separated integers"),
                                         ("--timeout 0", "--timeout must be > 0"), ("--workers 0", "--workers must be >= 1")])
def test_evaluate_rejects_bad_flags_before_any_work(tmp_path, flag, error):
    run = subprocess.run([sys.executable, "-m", "bcoder.evaluate", "--format", "mbpp", "--problems", "missing.jsonl",
                          "--samples", "missing.jsonl", "--out", str(tmp_path / "out"), *flag.split()],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 2 and error in run.stderr and "Traceback" not in run.stderr


def test_without_isolation_programs_still_run_and_leftovers_die(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    daemon = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              f"        open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n        time.sleep(100)\n"
              f"    os._exit(0)\ntime.sleep(0.2)\ndef f(x): return 2 * x")
    killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef f(x): return 2 * x"
    with Sandbox(SandboxConfig(timeout=2, isolate=False), workers=1) as box:
        assert not box.isolated
        results = run_in_order(box, [daemon, killer, "def f(x): return 2 * x"], DOUBLE)
    assert [r.outcome for r in results] == ["passed", "runtime_error", "passed"]
    assert results[1].error_type == "HarnessError"        # it killed its worker; the pool went on
    daemon_pid = int(pid_file.read_text())
    with pytest.raises(FileNotFoundError):
        open(f"/proc/{daemon_pid}/stat").read()


def test_programs_never_see_the_evaluators_heavy_modules():
    """The sandbox imports neither torch nor numpy, and a caller's torch never reaches a fork."""
    script = ("import sys, torch\nfrom bcoder.sandbox import run_programs, UnitTests, ValueTest\n"
              "assert 'numpy' not in sys.modules or 'torch' in sys.modules\n"
              "program = 'import sys\\ndef heavy(): return sorted(m for m in (\"torch\", \"numpy\") if m in sys.modules)'\n"
              "[r] = run_programs([program], UnitTests([ValueTest('heavy()', [])]), workers=1)\n"
              "print(r.outcome)")
    light = "import sys, bcoder.sandbox, bcoder.data.loading\nprint(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    repo = str(Path(__file__).resolve().parents[1])
    run = subprocess.run
    assert run([sys.executable, "-c", light], capture_output=True, text=True, cwd=repo).stdout == "[]\n"
    assert run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo).stdout == "passed\n"
