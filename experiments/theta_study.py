"""The theta-stage over seeds, against its controls: settings of the tiny preset, each trained from one
shared theta_ckpt and replay store (phi + theta + the CE-only control + eval per seed), summarised as mean ±
std over the seeds, with the paired differences that decide whether the method adds anything.

    python -m bcoder.train --preset tiny --out runs/base            # once: sft and sample (the rest unused)
    python experiments/theta_study.py --base runs/base --out runs/study --seeds 0,1,2 \
        --setting "paper=" --setting "ce1000=--beta-ce 1000" ...

Each setting is NAME=FLAGS (flags of bcoder.train on top of --preset tiny). A run that exists is read, not
retrained. Per seed it reads eval.json and eval_samples.jsonl, where every policy sampled with the same random
numbers:
  - unranked pass@1 of theta_ckpt, theta and the CE-only control (theta's steps with L_Q and L_adv cut from
    the logits), and theta - control per seed;
  - ranked pass@1 of theta_ckpt's pool by theta's R~ and by the free baselines, phi's R~ (no theta-stage) and
    theta_ckpt's mean token log-probability, and theta's R~ minus the better baseline per seed;
  - whether mean R~ orders passed > failed > runtime_error > compile_error;
  - theta_ckpt's filtered and oracle pass@1 (ranked by the example tests, by every test): the room ranking has.
A difference counts only where its mean exceeds its spread over seeds (the noise floor, measured here). Per
problem, pooled over seeds: the problems where theta's R~ picks a passing program and a baseline a failing one,
and the reverse, with the two-sided sign test's p.
The table (markdown) goes to stdout and --table.
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from bcoder.protocols import top_k_solved

OUTCOMES = ("passed", "failed", "runtime_error", "compile_error")


def checkpoint(base):
    """theta_ckpt of a base run: its ckpt/, or the --model it sampled from (a run of the sample stage alone)."""
    if (base / "ckpt").is_dir():
        return base / "ckpt"
    return Path(json.loads((base / "config.json").read_text())["model"])


def train(base, out, seed, flags):
    command = [sys.executable, "-m", "bcoder.train", "--preset", "tiny", "--model", str(checkpoint(base)),
               "--replay", str(base / "replay.db"), "--seed", str(seed), "--curve-every", "0", "--out", str(out),
               *flags]
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def measures(run):
    """(row of this seed's numbers, paired(...) of its samples)."""
    report = json.loads((run / "eval.json").read_text())
    pass1 = lambda table: 100 * table["pass@1"]
    row = {"ckpt unranked": pass1(report["ckpt"]["unranked"]), "θ unranked": pass1(report["theta"]["unranked"]),
           "control unranked": pass1(report["control"]["unranked"]) if "control" in report else None}
    row["θ − control"] = None if row["control unranked"] is None else row["θ unranked"] - row["control unranked"]
    ranked = {"θ R~": report["ckpt"]["ranked"], **{name: table["ranked"] for name, table
                                                    in report["ckpt"].get("ranked_by", {}).items()}}
    row.update({f"ckpt pool by {name}": pass1(table) for name, table in ranked.items()})
    baselines = [row[f"ckpt pool by {name}"] for name in ("phi", "logprob") if f"ckpt pool by {name}" in row]
    row["θ R~ − best baseline"] = row["ckpt pool by θ R~"] - max(baselines) if baselines else None
    row["θ pool by θ R~"] = pass1(report["theta"]["ranked"])
    for protocol in ("filtered", "oracle"):     # the room ranking has: the example tests, every test
        row[f"ckpt {protocol}"] = pass1(report["ckpt"][protocol]) if protocol in report["ckpt"] else None
    means = [report["mean_return_by_outcome"][o] for o in OUTCOMES]
    row["R~ ordered"] = float(None not in means and all(a > b for a, b in zip(means, means[1:])))
    samples = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    for policy in ("ckpt", "theta", "control"):
        row[f"{policy} compile errors"] = sum(s["outcome"] == "compile_error" for s in samples
                                              if s["policy"] == policy and s["pool"] == "main")
    return row, paired(samples)


def paired(samples):
    """{baseline: [problems where theta's R~ picks a passing program and the baseline a failing one, and the
    reverse]} on theta_ckpt's pool (ties within a ranker count fractionally, as the ranked protocol does)."""
    pools = defaultdict(list)
    for sample in samples:
        if sample["policy"] == "ckpt" and sample["pool"] == "main":
            pools[sample["task_id"]].append(sample)
    counts = {"φ R~": [0, 0], "log-prob": [0, 0]}
    for pool in pools.values():
        passed = [s["outcome"] == "passed" for s in pool]
        solved = {name: top_k_solved([s[key] for s in pool], passed, 1, len(pool), None)
                  for name, key in (("θ R~", "return"), ("φ R~", "return_phi"), ("log-prob", "logprob"))}
        for baseline, count in counts.items():
            count[0] += solved["θ R~"] > solved[baseline]
            count[1] += solved["θ R~"] < solved[baseline]
    return counts


def sign_test(wins, losses):
    """Two-sided p of the exact sign test: wins against losses, ties left out."""
    n = wins + losses
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n) if n else 1.0


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}" if abs(statistics.mean(values)) < 10 else \
        f"{statistics.mean(values):.1f} ± {std:.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=Path,
                        help="a tiny run with replay.db, and ckpt/ or the --model it sampled from")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--setting", action="append", required=True, help="NAME=FLAGS")
    parser.add_argument("--table", type=Path)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    for setting in args.setting:
        name, _, flags = setting.partition("=")
        per_seed, pairs = [], []
        for seed in seeds:
            run = args.out / f"{name}-s{seed}"
            if not (run / "eval.json").is_file():
                train(args.base, run, seed, flags.split())
            row, counts = measures(run)
            per_seed.append(row)
            pairs.append(counts)
            print(f"{name} seed {seed}: {json.dumps(row)} {json.dumps(counts)}", file=sys.stderr)
        rows[name] = (flags, per_seed, pairs)
    keys = list(next(iter(rows.values()))[1][0])
    baselines = list(next(iter(rows.values()))[2][0])
    lines = ["| setting | flags | " + " | ".join(keys) + " | θ > control (seeds) | θ R~ > baselines (seeds) | " +
             " | ".join(f"θ R~ vs {b}: problems won / lost, all seeds (sign test p)" for b in baselines) + " |",
             "|" + "---|" * (len(keys) + 4 + len(baselines))]
    for name, (flags, per_seed, pairs) in rows.items():
        wins = lambda key: sum((r[key] or 0) > 0 for r in per_seed)
        means = [mean_std([r[k] for r in per_seed]) for k in keys]
        problems = []
        for baseline in baselines:
            won, lost = (sum(counts[baseline][i] for counts in pairs) for i in (0, 1))
            problems.append(f"{won} / {lost} (p {sign_test(won, lost):.2f})")
        lines.append(f"| {name} | `{flags or '(tiny)'}` | " + " | ".join(means) +
                     f" | {wins('θ − control')}/{len(per_seed)} | {wins('θ R~ − best baseline')}/{len(per_seed)} | " +
                     " | ".join(problems) + " |")
    table = "\n".join(lines)
    print(table)
    if args.table:
        args.table.write_text(table + "\n")


if __name__ == "__main__":
    main()
