"""Benchmark of the fused Bellman loss on the CPU against the plain-PyTorch reference.

    python bench/bellman.py            # the full table of the issue (several minutes)
    python bench/bellman.py --quick    # one small shape, to check that it runs

For each shape and dtype: forward, backward, forward+backward and no-grad forward of
`bcoder.bellman_loss` (backend "cpp", out of place and in place) vs `bcoder.reference.bellman_loss`
in eager mode and under `torch.compile`. Half of the programs are ground truth (rho_real = 0.5),
so half the rows take the dense cross-entropy gradient. Reports median times, peak resident
memory above the inputs, effective GB/s and the floor set by memory bandwidth measured in the
same run: the fewest bytes a fused forward+backward must move are both logits read once and the
gradient written once (SPEC section 9).
"""
import argparse
import platform
import statistics
import time

import torch

import bcoder
from bcoder import reference

PROGRAMS = 16


def make_inputs(rows, vocab, dtype):
    steps = rows // PROGRAMS
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(PROGRAMS, steps, vocab, generator=generator) * 3).to(dtype).requires_grad_()
    ckpt = (torch.randn(PROGRAMS, steps, vocab, generator=generator) * 3).to(dtype)
    values = torch.randn(PROGRAMS, steps, generator=generator).to(dtype).requires_grad_()
    actions = torch.randint(0, vocab, (PROGRAMS, steps), generator=generator)
    mask = torch.ones(PROGRAMS, steps, dtype=torch.bool)
    rewards = torch.tensor([1.0, -0.3, -0.6, -1.0]).repeat(PROGRAMS // 4).to(dtype)
    is_ground_truth = torch.arange(PROGRAMS) % 2 == 0
    return logits, ckpt, values, actions, mask, rewards, is_ground_truth


def resident_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes_above_current(fn):
    """Peak resident memory while fn runs, above what is resident before it (Linux VmHWM)."""
    before = resident_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    fn()
    return max(resident_bytes("VmHWM") - before, 0)


def copy_bandwidth(nbytes):
    """Bytes per second of a large memory copy (read + write), median of 5."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src).fill_(0.0)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times[1:])


def time_loss(loss_fn, inputs, repeats):
    """Median seconds of (forward, backward, no-grad forward) and peak memory of forward+backward."""
    logits, values = inputs[0], inputs[2]
    forward, backward, no_grad = [], [], []
    for _ in range(repeats + 1):  # the first round warms up (and compiles)
        logits.grad = values.grad = None
        start = time.perf_counter()
        loss = loss_fn(*inputs)
        middle = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        forward.append(middle - start)
        backward.append(end - middle)
        with torch.no_grad():
            start = time.perf_counter()
            loss_fn(*inputs)
            no_grad.append(time.perf_counter() - start)
    logits.grad = values.grad = None

    def forward_backward():
        loss_fn(*inputs).backward()

    peak = peak_bytes_above_current(forward_backward)
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

    bandwidth = copy_bandwidth(256 << 20)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; copy bandwidth {bandwidth / 1e9:.1f} GB/s (read+write, 256 MiB)\n")
    print("| N | V | dtype | variant | fwd ms | bwd ms | fwd+bwd ms | no-grad fwd ms | fwd+bwd GB/s "
          "| x floor | peak MiB above inputs | x logits size | speed-up vs eager | vs compile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rows, vocab in shapes:
        for dtype in dtypes:
            inputs = make_inputs(rows, vocab, dtype)
            logits_bytes = inputs[0].numel() * inputs[0].element_size()
            floor_bytes = 3 * logits_bytes  # read logits and ckpt logits, write the gradient
            floor = floor_bytes / bandwidth
            results = {}
            torch._dynamo.reset()  # else the recompile limit, reached across shapes, falls back to eager
            for name, loss_fn in variants(not args.no_compile).items():
                run_inputs = inputs
                if "in place" in name:
                    scratch = inputs[0].detach().clone().requires_grad_()
                    run_inputs = (scratch, *inputs[1:])
                results[name] = time_loss(loss_fn, run_inputs, args.repeats)
            for name, (fwd, bwd, no_grad, peak) in results.items():
                total = fwd + bwd
                eager_total = sum(results["reference eager"][:2])
                compiled = results.get("reference torch.compile")
                versus_compile = f"{sum(compiled[:2]) / total:.1f}x" if compiled else "-"
                print(f"| {rows} | {vocab} | {str(dtype).removeprefix('torch.')} | {name} | {fwd * 1e3:.0f} "
                      f"| {bwd * 1e3:.0f} | {total * 1e3:.0f} | {no_grad * 1e3:.0f} | {floor_bytes / total / 1e9:.1f} "
                      f"| {total / floor:.2f} | {peak / 2**20:.0f} | {peak / logits_bytes:.2f} "
                      f"| {eager_total / total:.1f}x | {versus_compile} |")


if __name__ == "__main__":
    main()
