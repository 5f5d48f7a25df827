"""The theta-stage over seeds: settings of the tiny preset, each trained from one shared theta_ckpt and
replay store (phi + theta + eval per seed), summarised as mean ± std over the seeds.

    python -m bcoder.train --preset tiny --out runs/base            # once: sft and sample (the rest unused)
    python experiments/theta_study.py --base runs/base --out runs/study --seeds 0,1,2 \
        --setting "paper=" --setting "ce2=--beta-ce 2.0" ...

Each setting is NAME=FLAGS (flags of bcoder.train on top of --preset tiny). A run that exists is
read, not retrained. Per seed it reads eval.json and eval_samples.jsonl: greedy and unranked /
ranked pass@1 of theta_ckpt and theta, the compile errors among each policy's samples, and mean R~
per outcome over all scored samples. The table (markdown) goes to stdout and --table.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

COLUMNS = [("ckpt greedy", ("ckpt", "greedy")), ("ckpt unranked", ("ckpt", "unranked")),
           ("ckpt ranked", ("ckpt", "ranked")), ("θ greedy", ("theta", "greedy")),
           ("θ unranked", ("theta", "unranked")), ("θ ranked", ("theta", "ranked"))]
OUTCOMES = ("passed", "failed", "runtime_error", "compile_error")


def train(base, out, seed, flags):
    command = [sys.executable, "-m", "bcoder.train", "--preset", "tiny", "--model", str(base / "ckpt"),
               "--replay", str(base / "replay.db"), "--seed", str(seed), "--curve-every", "0", "--out", str(out),
               *flags]
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def measures(run):
    report = json.loads((run / "eval.json").read_text())
    samples = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    row = {name: 100 * report[policy][protocol]["pass@1"] for name, (policy, protocol) in COLUMNS}
    for policy in ("ckpt", "theta"):
        row[f"{policy} compile errors"] = sum(s["outcome"] == "compile_error" for s in samples
                                              if s["policy"] == policy and s["pool"] == "main")
    row.update({f"R~ {o}": report["mean_return_by_outcome"][o] for o in OUTCOMES})
    return row


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}" if abs(statistics.mean(values)) < 10 else \
        f"{statistics.mean(values):.1f} ± {std:.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=Path, help="a tiny run with ckpt/ and replay.db")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--setting", action="append", required=True, help="NAME=FLAGS")
    parser.add_argument("--table", type=Path)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    for setting in args.setting:
        name, _, flags = setting.partition("=")
        per_seed = []
        for seed in seeds:
            run = args.out / f"{name}-s{seed}"
            if not (run / "eval.json").is_file():
                train(args.base, run, seed, flags.split())
            per_seed.append(measures(run))
            print(f"{name} seed {seed}: {json.dumps(per_seed[-1])}", file=sys.stderr)
        rows[name] = (flags, per_seed)
    keys = list(next(iter(rows.values()))[1][0])
    lines = ["| setting | flags | " + " | ".join(keys) + " | θ unranked ≥ ckpt | θ ranked > ckpt ranked |",
             "|" + "---|" * (len(keys) + 4)]
    for name, (flags, per_seed) in rows.items():
        better = sum(r["θ unranked"] >= r["ckpt unranked"] for r in per_seed)
        ranked = sum(r["θ ranked"] > r["ckpt ranked"] for r in per_seed)
        cells = [mean_std([r[k] for r in per_seed]) for k in keys]
        lines.append(f"| {name} | `{flags or '(tiny)'}` | " + " | ".join(cells) +
                     f" | {better}/{len(per_seed)} | {ranked}/{len(per_seed)} |")
    table = "\n".join(lines)
    print(table)
    if args.table:
        args.table.write_text(table + "\n")


if __name__ == "__main__":
    main()
