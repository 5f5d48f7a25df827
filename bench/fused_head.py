"""CPU benchmark of bcoder.bellman_loss_from_hidden vs logits-then-loss: time and peak memory.

    python bench/fused_head.py                       # N = 4096 rows, H = 512, V = 32128, fp32
    python bench/fused_head.py --rows 1024 --repeats 1

Two ways to the theta-stage loss from the decoder's hidden states, forward + backward w.r.t.
hidden, lm_head_weight and values (conservative operator, checkpoint hidden states and weight):
    logits then bellman_loss   logits = hidden @ W.T, ckpt_logits = ckpt_hidden @ W_ckpt.T (no grad),
                               bcoder.bellman_loss(..., backend="cpp")
    bellman_loss_from_hidden   the same loss, chunked, never holding [N, V] logits
on two batches of B = N / 512 programs of T = 512 positions (lengths uniform in [T/2, T]): a
quarter of the programs ground truth (every fourth; their rows get the dense cross-entropy
gradient) and none. Inputs and the logits-then-loss path come from bench/common.py.

Peak memory is measured in a fresh subprocess per variant: the rise of the process's peak resident
set (VmHWM in /proc/self/status, reset through /proc/self/clear_refs once the inputs exist) over
the first forward + backward, so it counts everything that pass allocates, the returned gradients
included (d W is [V, H]); large blocks are mmap'd (MALLOC_MMAP_THRESHOLD_) so that the resident
set follows live memory. Times are medians over --repeats rounds in one process that runs the
variants in turn (a shared machine's changing load then hits both alike), the first round included.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import logits_then_loss, make_hidden_inputs, peak_rss_rise  # bench/common.py

STEPS = 512
VARIANTS = ("logits then bellman_loss", "bellman_loss_from_hidden")
BATCHES = ("1/4 ground truth", "no ground truth")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096, help="N = B * T, a multiple of T = 512")
    parser.add_argument("--hidden", type=int, default=512, help="H")
    parser.add_argument("--vocab", type=int, default=32128, help="V")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_inputs(args, ground_truth_fraction):
    """common.HiddenInputs of B = N / T programs, fp32 on the CPU."""
    return make_hidden_inputs(args.rows // STEPS, STEPS, args.hidden, args.vocab,
                              ground_truth_fraction=ground_truth_fraction, min_length=STEPS // 2)


def passes(variant, inputs):
    """(forward, forward_backward) of one variant on the inputs of make_inputs."""
    import torch

    import bcoder

    trained = (inputs.hidden, inputs.lm_head_weight, inputs.values)

    def forward():
        if variant == VARIANTS[1]:
            return bcoder.bellman_loss_from_hidden(*inputs, backend="cpp").loss
        return logits_then_loss(inputs, backend="cpp").loss

    def forward_backward():
        torch.autograd.grad(forward(), trained)

    return forward, forward_backward


def worker(args):
    """`peak VARIANT BATCH`: the peak RSS rise (MiB) of one forward + backward, in a fresh process.
    `times BATCH`: median seconds of each variant's forward (no grad) and forward + backward, the
    variants interleaved round by round so that a change in the machine's load hits both alike.
    Prints one JSON line."""
    import torch

    mode, *rest = args.worker
    batch = rest[-1]
    inputs = make_inputs(args, 0.25 if batch == BATCHES[0] else 0.0)
    if mode == "peak":
        _, forward_backward = passes(rest[0], inputs)
        return print(json.dumps(peak_rss_rise(forward_backward) / 2**20))
    times = {(variant, kind): [] for variant in VARIANTS for kind in ("forward", "fwd_bwd")}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            forward, forward_backward = passes(variant, inputs)
            times[variant, "fwd_bwd"].append(timed(forward_backward))
            with torch.no_grad():
                times[variant, "forward"].append(timed(forward))
    print(json.dumps({f"{variant}|{kind}": statistics.median(t) for (variant, kind), t in times.items()}))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    if args.rows % STEPS:
        sys.exit(f"--rows must be a multiple of T = {STEPS}")
    import torch

    logits_mib = args.rows * args.vocab * 4 / 2**20
    print(f"## bellman_loss_from_hidden vs logits then bellman_loss (CPU)\n\n"
          f"N = {args.rows} rows ({args.rows // STEPS} x {STEPS}), H = {args.hidden}, V = {args.vocab}, fp32, "
          f"conservative operator with checkpoint hidden states and weight; forward + backward w.r.t. hidden, "
          f"W and values. torch {torch.__version__}, {torch.get_num_threads()} threads. One [N, V] fp32 "
          f"tensor is {logits_mib:.0f} MiB. Peak: rise of the peak RSS over one forward + backward (gradients "
          f"included); times: medians of {args.repeats}, the variants interleaved.\n")
    # Large blocks straight from mmap and back to the kernel on free, so the resident set follows
    # what is live rather than what glibc's heap keeps.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**16)}
    worker_command = [sys.executable, __file__, "--rows", str(args.rows), "--hidden", str(args.hidden),
                      "--vocab", str(args.vocab), "--repeats", str(args.repeats), "--worker"]

    def run_worker(*worker_args):
        result = subprocess.run(worker_command + list(worker_args), check=True, capture_output=True, text=True, env=env)
        return json.loads(result.stdout)

    rows = []
    for batch in BATCHES:
        times = run_worker("times", batch)
        for variant in VARIANTS:
            rows.append([batch, variant, f"{times[variant + '|forward']:.2f}", f"{times[variant + '|fwd_bwd']:.2f}",
                         f"{run_worker('peak', variant, batch):.0f}"])
    print("| batch | variant | forward s | fwd+bwd s | peak MiB |\n|---|---|---|---|---|")
    print("\n".join("| " + " | ".join(row) + " |" for row in rows))


if __name__ == "__main__":
    main()
