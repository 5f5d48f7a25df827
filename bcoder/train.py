"""Two-stage B-Coder training of a Hugging Face T5 or decoder-only LM, end to end (docs/method.md#training).

    python -m bcoder.train --preset tiny --out runs/tiny          # every stage, on the CPU
    python -m bcoder.train --preset tiny --out runs/tiny --resume  # continue an interrupted run
    python -m bcoder.train --out runs/x --model CKPT_DIR --data mbpp:PATH --stage sample

Stages, in order, each resumable and each writing into the run directory:
  sft     train theta_ckpt from scratch with cross-entropy (stands in for a downloaded
          checkpoint; skipped with --model). Writes ckpt/ (model and tokenizer).
  sample  sample m programs per training problem from theta_ckpt, run them in the sandbox and
          store every program with its outcome in replay.db (ground truths too).
  phi     the phi-stage: pre-train the value decoder phi on L_V; writes phi/.
  theta   the theta-stage: L_Q + beta_adv L_adv + beta_ce L_ce on batches mixing ground truth
          and generated programs; writes theta/.
  eval    greedy and sampled pass@k of theta_ckpt and theta on the held-out problems; eval.json.

Across processes (bcoder.distributed; docs in the README):

    torchrun --nproc_per_node N -m bcoder.train --preset tiny --out runs/tiny [--fsdp]

runs every stage on N ranks (NCCL on GPUs, cuda:LOCAL_RANK each; Gloo on CPUs). sft_batch,
phi_batch and theta_batch are GLOBAL batches: rank r trains on rows r, r + N, ... of every batch
(N must divide them) with DDP (or FSDP2 with --fsdp), the loss normalisers summed over the ranks,
so N processes train as one does. sample and eval shard their problem chunks (seeded per chunk,
not per rank); rank 0 alone writes the run directory and the replay database. Checkpoints hold
the full model and optimiser state: any N resumes them.

The run directory and its files: bcoder.run. This module is the command line alone: it reads the
flags with bcoder.config, which loads no torch, transformers or model (so --help, a flag error and
--print-config answer at once), then runs the stages of bcoder.stages.
"""
import argparse
import json
import sys

from bcoder.cli import EXPECTED_ERRORS, ArgumentParser, exit_with
from bcoder.config import add_config_flags, check_config, config_dict, config_from_flags, still_needed
from bcoder.run import STAGES

PROMISES = """
--out, --resume, --overwrite: a run directory is made only once the whole config is valid (every flag,
the data files, --model's config and tokenizer, --replay). An existing run is continued only with
--resume, which refuses when a setting that changes results differs from the run's config.json (and
says which); a resumed stage restarts from its last checkpoint. --overwrite deletes --out first, but
only a directory holding a bcoder run, and never one that --model or --replay lies inside. One
process at a time writes a run (RUN/.lock). Every result file is written atomically: a kill leaves
the old file or the new one.
"""


def parse_args(argv=None):
    parser = ArgumentParser(prog="bcoder.train", description=__doc__ + PROMISES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="the run directory (required but with --print-config)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON (and what the run still needs) and exit")
    parser.add_argument("--stage", choices=STAGES, help="run only this stage")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace the bcoder run in --out")
    parser.add_argument("--fsdp", action="store_true",
                        help="under torchrun: shard the trained model with FSDP2 instead of replicating it (DDP)")
    add_config_flags(parser)
    return parser, parser.parse_args(argv)


def main(argv=None):
    parser, args = parse_args(argv)
    config = config_from_flags(args)
    try:
        check_config(config)  # a bad value answers here, before torch loads
    except EXPECTED_ERRORS as error:
        exit_with("bcoder.train", error)
    missing = still_needed(args.preset, config)
    if args.print_config:
        print(json.dumps(config_dict(config), indent=2), flush=True)
        if missing:
            print(f"bcoder.train: a run of --preset {args.preset} also needs {' and '.join(missing)}", file=sys.stderr)
        return
    if missing:
        parser.error(f"--preset {args.preset} needs {' and '.join(missing)}")
    if not args.out:
        parser.error("--out is required")
    from bcoder.stages import run_stages  # torch, transformers and the models: only for a run
    try:
        run_stages(config, args.out, args.stage, args.resume, args.overwrite, args.fsdp)
    except EXPECTED_ERRORS as error:
        exit_with("bcoder.train", error)


if __name__ == "__main__":
    main()
