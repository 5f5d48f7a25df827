"""Benchmark of the fused Bellman loss on the CPU against the plain-PyTorch reference.

    python bench/bellman.py            # the full table of the issue (several minutes)
    python bench/bellman.py --quick    # one small shape, to check that it runs

For each shape and dtype: forward, backward, forward+backward and no-grad forward of
`bcoder.bellman_loss` (backend "cpp", out of place and in place) vs `bcoder.reference.bellman_loss`
in eager mode and under `torch.compile`. Half of the programs are ground truth (rho_real = 0.5),
so half the rows take the dense cross-entropy gradient. Reports median times, peak resident
memory above the inputs, effective GB/s and the floor set by memory bandwidth measured in the
same run (bench/common.py): the fewest bytes a fused forward+backward must move are both logits
read once and the gradient written once (docs/method.md#the-fused-op).

The in-place variant writes its gradient over a scratch copy of the logits; before every pass
(outside the timed region) the scratch is refilled with the original logits, so each repeat
times the same input.
"""
import argparse
import platform
import statistics
import time

import torch
from common import copy_bandwidth, floor_bytes, make_loss_inputs, peak_rss_rise  # bench/common.py

import bcoder
from bcoder import reference

PROGRAMS = 16


def time_loss(loss_fn, inputs, repeats, fresh=lambda: None):
    """Median seconds of (forward, backward, no-grad forward) and peak memory of forward+backward.
    fresh() runs before each pass, untimed: it restores inputs that a pass overwrites."""
    logits, values = inputs[0], inputs[2]
    forward, backward, no_grad = [], [], []
    for _ in range(repeats + 1):  # the first round warms up (and compiles)
        fresh()
        logits.grad = values.grad = None
        start = time.perf_counter()
        loss = loss_fn(*inputs)
        middle = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        forward.append(middle - start)
        backward.append(end - middle)
        fresh()
        with torch.no_grad():
            start = time.perf_counter()
            loss_fn(*inputs)
            no_grad.append(time.perf_counter() - start)
    fresh()
    logits.grad = values.grad = None

    def forward_backward():
        loss_fn(*inputs).backward()

    peak = peak_rss_rise(forward_backward)
    logits.grad = values.grad = None
    return [statistics.median(t[1:]) for t in (forward, backward, no_grad)] + [peak]


def variants(compile_reference):
    def fused(*inputs):
        return bcoder.bellman_loss(*inputs, backend="cpp").loss

    def fused_in_place(logits, *rest):
        # The gradient is written over a scratch copy of the logits, as a training step would
        # write it over its own (disposable) logits buffer.
        return bcoder.bellman_loss(logits, *rest, backend="cpp", inplace_backward=True).loss

    def eager(*inputs):
        return reference.bellman_loss(*inputs)[0]

    found = {"fused (cpp)": fused, "fused (cpp, in place)": fused_in_place, "reference eager": eager}
    if compile_reference:
        compiled = torch.compile(reference.bellman_loss, dynamic=False)
        found["reference torch.compile"] = lambda *inputs: compiled(*inputs)[0]
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small shape")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--rows", type=int, nargs="*", default=[1024, 4096], help="N values")
    parser.add_argument("--vocab", type=int, nargs="*", default=[32128, 50304], help="V values")
    args = parser.parse_args()
    shapes = [(256, 4096)] if args.quick else [(n, v) for n in args.rows for v in args.vocab]
    dtypes = [torch.float32, torch.bfloat16]

    bandwidth = copy_bandwidth("cpu", 256 << 20)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; copy bandwidth {bandwidth / 1e9:.1f} GB/s (read+write, 256 MiB)\n")
    print("| N | V | dtype | variant | fwd ms | bwd ms | fwd+bwd ms | no-grad fwd ms | fwd+bwd GB/s "
          "| x floor | peak MiB above inputs | x logits size | speed-up vs eager | vs compile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rows, vocab in shapes:
        for dtype in dtypes:
            # every row real, half of the programs ground truth: the floor is 3 N V s
            inputs = make_loss_inputs(PROGRAMS, rows // PROGRAMS, vocab, dtype)
            logits_bytes = inputs.logits.numel() * inputs.logits.element_size()
            moved = floor_bytes(inputs, "fwd+bwd")
            floor = moved / bandwidth
            results = {}
            torch._dynamo.reset()  # else the recompile limit, reached across shapes, falls back to eager
            for name, loss_fn in variants(not args.no_compile).items():
                run_inputs, fresh = inputs, lambda: None
                if "in place" in name:
                    # the backward overwrites the scratch logits: refill them before each pass
                    scratch = inputs.logits.detach().clone().requires_grad_()
                    run_inputs = inputs._replace(logits=scratch)

                    def fresh(scratch=scratch, logits=inputs.logits):
                        with torch.no_grad():
                            scratch.copy_(logits)

                results[name] = time_loss(loss_fn, run_inputs, args.repeats, fresh)
            for name, (fwd, bwd, no_grad, peak) in results.items():
                total = fwd + bwd
                eager_total = sum(results["reference eager"][:2])
                compiled = results.get("reference torch.compile")
                versus_compile = f"{sum(compiled[:2]) / total:.1f}x" if compiled else "-"
                print(f"| {rows} | {vocab} | {str(dtype).removeprefix('torch.')} | {name} | {fwd * 1e3:.0f} "
                      f"| {bwd * 1e3:.0f} | {total * 1e3:.0f} | {no_grad * 1e3:.0f} | {moved / total / 1e9:.1f} "
                      f"| {total / floor:.2f} | {peak / 2**20:.0f} | {peak / logits_bytes:.2f} "
                      f"| {eager_total / total:.1f}x | {versus_compile} |")


if __name__ == "__main__":
    main()
