"""The command lines that should answer at once, timed as a user meets them, and judge-only throughput
through the command line against the Sandbox API.

Start-up: the wall time of `python -m bcoder.<command>` (a fresh interpreter each run; the median of
--repeat) for `--help` and a flag typo of train, evaluate, rank, report and data, and for
`bcoder.train --preset paper --print-config`, with the modules each loads (counted by a separate run
of the same command line) and whether torch, transformers, peft or bcoder._C is among them.

Judging: the 974 MBPP reference programs x --times (4), each a separate program run, as
bench/sandbox.py, judged (1) through the Sandbox API in this process (the pool's start and stop
counted, and not) and (2) through `python -m bcoder.evaluate --format mbpp --samples ... --out ...`,
the whole command: interpreter start, loading, judging and writing its results. --rounds of each,
alternating; the best and the median are shown (on a shared machine the best is the steadier).

Usage: python bench/cli.py [--repeat N] [--workers N] [--times R] [--rounds N] [--no-judge]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import default_data_dir
from bcoder.sandbox import Sandbox, SandboxConfig

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "bcoder._C")
COMMANDS = [("train", ["--help"]), ("train", ["--theta-stesp", "3"]),
            ("train", ["--preset", "paper", "--print-config"]),
            ("evaluate", ["--help"]), ("evaluate", ["--fromat", "mbpp"]),
            ("rank", ["--help"]), ("rank", ["--run", "r", "--samples", "s", "--out", "o", "--batch-szie", "8"]),
            ("report", ["--help"]), ("report", ["run", "--ablaton", "x=y"]),
            ("data", ["--help"]), ("data", ["fecth"])]
# The command as `python -m` runs it, then the modules it left loaded (on stderr, after its own output).
COUNT = ("import json, runpy, sys\ncommand = sys.argv[1]\nsys.argv = ['bcoder.' + command, *sys.argv[2:]]\n"
         "try:\n    runpy.run_module('bcoder.' + command, run_name='__main__', alter_sys=True)\n"
         "except SystemExit:\n    pass\n"
         f"print(json.dumps([len(sys.modules), [m for m in {HEAVY!r} if m in sys.modules]]), file=sys.stderr)")


def wall(argv, repeat):
    """The median wall time of `argv` over `repeat` runs, and its last exit status."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        code = subprocess.run(argv, cwd=REPO, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def startup(repeat):
    print(f"{'command':66s} {'median s':>8s} {'exit':>4s} {'modules':>7s}  heavy")
    for command, args in COMMANDS:
        seconds, code = wall([sys.executable, "-m", f"bcoder.{command}", *args], repeat)
        probe = subprocess.run([sys.executable, "-c", COUNT, command, *args], cwd=REPO, capture_output=True, text=True)
        modules, heavy = json.loads(probe.stderr.strip().splitlines()[-1])
        line = f"python -m bcoder.{command} {' '.join(args)}"
        print(f"{line:66s} {seconds:8.2f} {code:4d} {modules:7d}  {', '.join(heavy) or '-'}")


def judging(workers, times, rounds, timeout=10.0):
    mbpp = default_data_dir() / "mbpp.jsonl"
    problems = load_mbpp(mbpp) * times
    programs, tests = [p.solutions[0] for p in problems], [p.tests for p in problems]
    n = len(programs)
    seconds = {"api_run": [], "api": [], "cli": []}
    with tempfile.TemporaryDirectory() as directory:
        samples, out = Path(directory) / "samples.jsonl", Path(directory) / "results.jsonl"
        samples.write_text("".join(json.dumps({"task_id": p.task_id, "program": p.solutions[0]}) + "\n"
                                   for p in problems))
        for _ in range(rounds):  # alternating, so that a burst of load elsewhere hits both alike
            started = time.perf_counter()
            with Sandbox(SandboxConfig(timeout=timeout), workers=workers) as box:
                run_started = time.perf_counter()
                results = box.run(programs, tests, progress=False)
                seconds["api_run"].append(time.perf_counter() - run_started)
            seconds["api"].append(time.perf_counter() - started)

            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "bcoder.evaluate", "--format", "mbpp", "--problems",
                                   str(mbpp), "--samples", str(samples), "--out", str(out), "--workers", str(workers),
                                   "--timeout", str(timeout), "--k", "1", "--force"], cwd=REPO, capture_output=True,
                                  text=True)
            seconds["cli"].append(time.perf_counter() - started)
            if done.returncode:
                sys.exit(f"bcoder.evaluate failed: {done.stderr[-2000:]}")
            passed = sum(json.loads(line)["outcome"] == "passed" for line in out.read_text().splitlines())
            print(f"  round: API {sum(r.passed for r in results)}/{n} passed, command line {passed}/{n}")

    print(f"{n} programs ({n // times} MBPP references x {times}), {workers} workers, timeout {timeout} s, "
          f"{rounds} rounds: best (median) seconds and programs/s")
    for key, label in (("api_run", "Sandbox API, box.run alone       "), ("api", "Sandbox API, with start and stop "),
                       ("cli", "python -m bcoder.evaluate (whole)")):
        best, median = min(seconds[key]), statistics.median(seconds[key])
        print(f"{label}: {best:6.2f} s ({median:6.2f})  {n / best:6.1f} programs/s ({n / median:6.1f})")
    print(f"command line / API with start and stop: {min(seconds['cli']) / min(seconds['api']):.2f}x best, "
          f"{statistics.median(seconds['cli']) / statistics.median(seconds['api']):.2f}x median")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command line (the median is shown)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--times", type=int, default=4, help="runs of each MBPP reference")
    parser.add_argument("--rounds", type=int, default=3, help="judging rounds, API and command line alternating")
    parser.add_argument("--no-judge", action="store_true", help="start-up times alone")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} (1 min) at the start")
    startup(args.repeat)
    if not args.no_judge:
        judging(args.workers, args.times, args.rounds)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")


if __name__ == "__main__":
    main()
