"""Execution sandbox: run untrusted programs against unit tests, fast, and score them.

API
---
    from bcoder.sandbox import run_programs, UnitTests, ValueTest, AssertTest, CallTest, StdioTest

    tests = UnitTests([CallTest("add", [1, 2], 3)])              # built in-process, or by
    results = run_programs(["def add(a, b): return a + b"],       # bcoder.data's loaders
                           [tests], timeout=10, workers=2)
    results[0].outcome, results[0].reward     # "passed", 1.0

`run_programs(programs, tests, *, timeout=10.0, workers=None, progress=None, **limits)`
returns one `ProgramResult` per program, in input order: `outcome` (passed +1.0, failed -0.3,
runtime_error -0.6, compile_error -1.0; docs/method.md#rewards), `reward`, `tests` (one `TestResult`
per case: passed, failed, error, timeout, not_run), `error_type`, `message` (truncated),
`seconds`, `peak_memory`, `stdout`/`stderr` (capped). `tests` is one `UnitTests` per program
or one shared by all; `limits` are the other `SandboxConfig` fields. For many calls, keep
the slots: `with Sandbox(SandboxConfig(timeout=4), workers=8) as box: box.run(programs, tests)`.

A test is a `ValueTest(expr, expected)` (MBPP asserts), an `AssertTest(code)` (HumanEval's
`check`), a `CallTest(fn_name, args, expected)` (APPS call-based) or a `StdioTest(input,
output)` (APPS stdin). `UnitTests(cases, setup="", apps=False, names=())` holds one problem's
tests; a program passes only if every one of them passes, and no program passes no tests.

Isolation model
---------------
A program's reward must not be forgeable by the program: RL learns whatever earns reward. So
nothing that decides an outcome is ever in the program's process. Each of the `workers`
slots has three kinds of process:

  the program's process  forked per program (per input, for stdin tests) from the slot's
      worker (worker.py, a small process that never holds a test). It runs the program
      (program.py) and then answers requests: "call this function with these arguments",
      "read or set this attribute". Nothing of a test is ever in it, nor in the memory it
      was forked from.
  the judge (judge.py)  one trusted process per slot that never loads a program. It holds the
      tests, runs the problem's own code (MBPP setup, HumanEval's prompt helpers and `check`),
      and binds each name the tests take from the program (`UnitTests.names`) to a proxy.
  the pool (pool.py, in the caller's process)  hands out programs and tests, compares stdin
      programs' output, and builds the results.

What crosses, and as what:
  pool -> worker   the program's source and, for stdin tests, their inputs; for call tests,
                   the names the tests take from the program and the program's ends of a
                   fresh pipe pair to the judge (SCM_RIGHTS).
  pool -> judge    the tests: code and expected values, and the judge's ends of the pipes.
  judge -> program a request: a call's arguments as plain data (values.py: builtin types
                   only), or a reference to an object of the program's own.
  program -> judge ["compiled"] or a compile error (written by the harness before any of the
                   program runs), then what each call returned, as plain data or as a
                   reference, or the type and message of what it raised. A reference equals
                   only itself and has no truth value here, so an object whose `__eq__` lies
                   takes part in no comparison; a builtin subclass crosses as its real value;
                   an exception becomes the builtin of that name (StopIteration and exits
                   become plain errors, so they cannot cut a test's loop short). Anything
                   else is a protocol error, so a forged line is at most a wrong answer.
  worker -> pool   how the program's process ended (exit status, signal, timeout), its
                   capped stdout and stderr, time and memory.
  judge -> pool    one verdict per test.
A stdin program's output is compared by the pool; the program never sees the expected output.

As root (CI), each slot's programs run as their own unprivileged uid (`uid_base + slot`) and
its judge as another (`uid_base + 32768 + slot`); the worker and judge are never dumpable
(no ptrace, no /proc/<pid>/mem or fds for anyone else of their uid). Each worker and judge has
its own network namespace (no interface up, loopback included), IPC namespace (each program
gets a fresh one too) and mount namespace. Programs, and the judge itself, run chrooted in a
root that holds only the interpreter's directories (read-only), /dev/{null,zero,full,random,urandom}, scratch
tmpfs mounts on /tmp, /var/tmp and /dev/shm (emptied after each program) and the program's
own work directory: no /proc, no home, no data set, no checkout. Limits per program:
wall-clock `timeout` for the program and all its tests (enforced from outside with SIGKILL),
CPU time, address space (2 GiB), processes (64), file size (16 MiB), open files (256), no
core dumps, capped output. The worker is a child subreaper: every process a program started,
daemons included, is killed and reaped before the next program.

Without root: programs run as the caller's user, without namespaces or chroot. The judge
still holds the tests and no program reaches them through its own process, and the worker
and judge are not dumpable; but a program can read the user's files (a data set with the
answers among them) and signal, or trace, the caller's other processes, so rewards can be
forged there. A SandboxWarning says so; run as root, or in a container, for RL.
"""
# The worker (worker.py) imports this package too, and every program's process is a fork of it:
# the names below load on first use, so that the worker stays small and its forks fast.
_LAZY = {"Sandbox": "pool", "SandboxWarning": "pool", "REWARDS": "schema", "AssertTest": "schema",
         "CallTest": "schema", "ProgramResult": "schema", "SandboxConfig": "schema", "StdioTest": "schema",
         "TestResult": "schema", "UnitTests": "schema", "ValueTest": "schema"}

__all__ = ["run_programs", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"bcoder.sandbox.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bcoder.sandbox' has no attribute {name!r}")


def run_programs(programs, tests, *, timeout=10.0, workers=None, progress=None, **limits):
    """Runs each program against its tests; one ProgramResult per program, in input order."""
    from bcoder.sandbox.pool import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout=timeout, **limits), workers=workers) as sandbox:
        return sandbox.run(programs, tests, progress=progress)
