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
runtime_error -0.6, compile_error -1.0; SPEC section 1), `reward`, `tests` (one `TestResult`
per case: passed, failed, error, timeout, not_run), `error_type`, `message` (truncated),
`seconds`, `peak_memory`, `stdout`/`stderr` (capped). `tests` is one `UnitTests` per program
or one shared by all; `limits` are the other `SandboxConfig` fields. For many calls, keep
the workers: `with Sandbox(SandboxConfig(timeout=4), workers=8) as box: box.run(programs, tests)`.

A test is a `ValueTest(expr, expected)` (MBPP asserts), an `AssertTest(code)` (HumanEval's
`check`), a `CallTest(fn_name, args, expected)` (APPS call-based) or a `StdioTest(input,
output)` (APPS stdin). `UnitTests(cases, setup="", apps=False)` holds one problem's tests.

How programs run
----------------
`workers` worker processes (`worker.py`, standard library only, started with `python -I`
and a minimal environment) each fork one child per program (per test for stdin programs):
no interpreter start-up per program, and the evaluator's own modules (torch) never reach a
child. Each child gets a new session and process group, a fresh working directory (removed
afterwards), stdin from /dev/null unless the test feeds it, captured and capped stdout and
stderr, and rlimits: address space (2 GiB), CPU time, processes (64), file size (16 MiB),
open files (256), no core dumps. The worker enforces the wall-clock `timeout` (for the
program and all its tests) from outside with SIGKILL. Afterwards nothing the program
started survives: the worker is a child subreaper, so every orphan, including `setsid`
daemons, becomes its child and is killed and reaped before the next program starts.

Rewards cannot be faked: only the worker, after every test ran, reports a finished run
(exit codes, stdout, `sys.exit(0)`, `os._exit(0)`, `atexit` hooks never count as a pass).
Values are compared outside the program's process as plain data read through the builtin
types (`ValueTest`, `CallTest`, stdout), so an object whose `__eq__` always returns True
equals nothing; asserts in `AssertTest` code compare plain-data copies in the same way.

Isolation as root (CI)
----------------------
Each worker slot runs its programs as its own unprivileged uid (`uid_base + slot`), so a
program cannot signal the worker or the evaluator, cannot change files it does not own,
and the process limit counts only that slot's processes; leftovers are killed by uid. Each
worker has its own network namespace (no interface up, loopback included) and mount
namespace with private, emptied-after-each-program tmpfs on /tmp, /var/tmp and /dev/shm.

Missing without root
--------------------
Programs run as the evaluator's user: they can read and change that user's files, signal
the worker (the pool then restarts it; that program gets a runtime error) and the
evaluator, reach the network, and leave files in /tmp. The process limit counts all of the
user's processes, so programs usually cannot start threads or subprocesses. Leftover
processes are still killed (subreaper), but a program that kills its worker can leave
daemons behind. Run as root, or in a container, for untrusted code.

Not protected anywhere: code run inside the program's process (the program, `AssertTest`
code such as HumanEval's `check`, MBPP asserts whose expected side is not a literal) can
be tampered with by a program that inspects the interpreter's frames or memory; values
judged by the evaluator (ValueTest, CallTest, StdioTest) cannot. CPU time is shared: the
programs of `workers` slots compete for the machine's cores.
"""
from bcoder.sandbox.pool import Sandbox
from bcoder.sandbox.schema import (REWARDS, AssertTest, CallTest, ProgramResult, SandboxConfig,
                                   StdioTest, TestResult, UnitTests, ValueTest)

__all__ = ["run_programs", "Sandbox", "SandboxConfig", "UnitTests", "ValueTest", "AssertTest",
           "CallTest", "StdioTest", "ProgramResult", "TestResult", "REWARDS"]


def run_programs(programs, tests, *, timeout=10.0, workers=None, progress=None, **limits):
    """Runs each program against its tests; one ProgramResult per program, in input order."""
    with Sandbox(SandboxConfig(timeout=timeout, **limits), workers=workers) as sandbox:
        return sandbox.run(programs, tests, progress=progress)
