"""Sandbox throughput on the 974 MBPP reference programs, against a human-eval-style harness.

The baseline is openai/human-eval's execution.py pattern: per program one
multiprocessing.Manager and one multiprocessing.Process, run from a pool of 4 threads.
Both run the same programs (code, test_setup_code, asserts) in the same process, one after
the other. Usage: python bench/sandbox.py [--data DIR] [--workers N] [--timeout S]
"""
import argparse
import contextlib
import io
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor

from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import default_data_dir
from bcoder.sandbox import run_programs


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    problems = load_mbpp(os.path.join(args.data, "mbpp.jsonl"))
    programs = [p.solutions[0] for p in problems]
    tests = [p.tests for p in problems]

    start = time.perf_counter()
    results = run_programs(programs, tests, timeout=args.timeout, workers=args.workers, progress=False)
    ours = time.perf_counter() - start
    slowest = max(results, key=lambda r: r.seconds)

    # The baseline runs the full script: program, setup, then the asserts as written.
    scripts = [p.solutions[0] + "\n" + p.tests.setup + "\n" + "\n".join(
        f"assert {c.expr} == {c.expected!r}" if hasattr(c, "expr") else c.code for c in p.tests.cases)
        for p in problems]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        baseline_results = list(pool.map(lambda s: baseline_check(s, args.timeout), scripts))
    baseline = time.perf_counter() - start

    # The full-set time is bounded by its slowest program (task 123, about 4 s of pure
    # compute), so also time both harnesses without it: the per-program overhead.
    rest = [i for i, r in enumerate(results) if r is not slowest]
    start = time.perf_counter()
    run_programs([programs[i] for i in rest], [tests[i] for i in rest], timeout=args.timeout,
                 workers=args.workers, progress=False)
    ours_rest = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: baseline_check(scripts[i], args.timeout), rest))
    baseline_rest = time.perf_counter() - start

    n = len(programs)
    print(f"machine: {os.cpu_count()} cores; {n} MBPP reference programs; sandbox workers={args.workers}")
    print(f"bcoder.sandbox : {ours:6.2f} s  {n / ours:7.1f} programs/s  "
          f"passed {sum(r.passed for r in results)}/{n}  (slowest program {slowest.seconds:.2f} s)")
    print(f"human-eval style: {baseline:6.2f} s  {n / baseline:7.1f} programs/s  "
          f"passed {baseline_results.count('passed')}/{n}")
    print(f"speed-up: {baseline / ours:.1f}x")
    print(f"without the slowest program: bcoder.sandbox {len(rest) / ours_rest:.1f} programs/s, "
          f"human-eval style {len(rest) / baseline_rest:.1f} programs/s, speed-up {baseline_rest / ours_rest:.1f}x")


if __name__ == "__main__":
    main()
