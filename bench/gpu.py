"""GPU benchmark of the fused Bellman loss: parity, timings, fraction of copy bandwidth, peak memory.

    python bench/gpu.py             # on a CUDA machine (written for an H100); prints markdown for bench/RESULTS.md
    python bench/gpu.py --dry-run   # CPU smoke test of every parity/timing path: tiny shapes, Triton's
                                    # interpreter, backends "triton" and "reference" (timings meaningless)

Backends: "triton" and "cuda" (bcoder.bellman_loss with that backend; "cuda" only when
torch.ops.bcoder.bellman_stats has a CUDA kernel), "reference" (bcoder.reference in eager
PyTorch) and "compiled" (torch.compile of bcoder.reference.bellman_loss).

Inputs: bench/common.py's builder, B programs of T positions with lengths uniform in [T/2, T]
(right-padded), half of the programs ground truth. The fraction of copy bandwidth puts a pass's
fewest bytes (bench/common.py's floor_bytes; docs/method.md#the-fused-op) over its time and
compares that with a large device-to-device copy_ measured in the same run (common.copy_bandwidth):
    forward          read logits and ckpt_logits of the real rows      2 R V s
    backward         write the gradient, read the dense (CE) rows      (N + D) V s
    forward+backward read both, write the gradient                     (2 R + N) V s
with N = B T rows, R of them real (padding rows are not read), D real rows of ground-truth
programs and s the element size.
"""
import argparse
import os
import sys

if "--dry-run" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the Triton kernels are defined

import torch  # noqa: E402
import triton  # noqa: E402
from common import copy_bandwidth, floor_bytes, logits_then_loss, make_hidden_inputs, make_loss_inputs  # noqa: E402
from common import median_ms as common_median_ms  # noqa: E402

import bcoder  # noqa: E402
from bcoder import reference  # noqa: E402
from bcoder.kernels import bellman as triton_bellman  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32128, 151936])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--backends", nargs="+", default=["triton", "cuda", "reference", "compiled"])
    parser.add_argument("--programs", type=int, default=8, help="B; N = B * T rows")
    parser.add_argument("--steps", type=int, default=1024, help="T")
    args = parser.parse_args()
    if args.dry_run:
        args.vocab, args.programs, args.steps = [300], 2, 8
        args.backends = [b for b in args.backends if b in ("triton", "reference")]
    return args


def has_cuda_kernel():
    from bcoder import ops  # noqa: F401  (loads bcoder._C, which registers torch.ops.bcoder.*)

    return torch._C._dispatch_has_kernel_for_dispatch_key("bcoder::bellman_stats", "CUDA")


def median_ms(fn):
    """Median time of fn in ms: triton.testing.do_bench (L2 flushed between runs) on CUDA,
    wall-clock of 3 runs after a warm-up on CPU."""
    return common_median_ms(fn, "cuda" if torch.cuda.is_available() else "cpu", repeats=3)


def make_inputs(programs, steps, vocab, dtype, device):
    """A batch like the theta-stage's (common.LossInputs): ragged programs, half of them ground
    truth (dense CE rows)."""
    return make_loss_inputs(programs, steps, vocab, dtype, device, min_length=steps // 2, scale=2.0)


def loss_fn(backend):
    """inputs -> scalar loss for one benchmarked backend."""
    if backend == "compiled":
        compiled = torch.compile(reference.bellman_loss, dynamic=False)
        return lambda inputs: compiled(*inputs)[0]
    return lambda inputs: bcoder.bellman_loss(*inputs, backend=backend).loss


def to_float64(inputs):
    return type(inputs)(*(v.detach().double().requires_grad_(v.requires_grad) if v.is_floating_point() else v
                          for v in inputs))


def loss_and_grads(fn, inputs):
    loss = fn(inputs)
    grad_logits, grad_values = torch.autograd.grad(loss, (inputs.logits, inputs.values))
    return [loss.detach(), grad_logits, grad_values]


def parity(backends, device, shape, dtype_names):
    """Max |error| vs the float64 reference of the loss and its gradients, next to the
    same-dtype reference's error; PASS when no worse than it by more than an ulp."""
    rows = []
    for dtype_name in dtype_names:
        dtype = DTYPES[dtype_name]
        inputs = make_inputs(*shape, dtype, device)
        oracle = loss_and_grads(loss_fn("reference"), to_float64(inputs))
        same_dtype = loss_and_grads(loss_fn("reference"), inputs)
        for backend in backends:
            got = loss_and_grads(loss_fn(backend), inputs)
            cells, ok = [], True
            for name, g, r, o in zip(("loss", "d logits", "d values"), got, same_dtype, oracle):
                error = (g.double() - o).abs().max().item()
                ref_error = (r.double() - o).abs().max().item()
                ok &= error <= ref_error + torch.finfo(dtype).eps * o.abs().max().item() + 1e-6
                cells.append(f"{error:.2e} ({ref_error:.2e})")
            rows.append([backend, dtype_name, *cells, "PASS" if ok else "FAIL"])
        rows.extend(kernel_parity(inputs, dtype_name))
    return rows


def kernel_parity(inputs, dtype_name):
    """The Triton op's statistics against the float64 oracle (argmax exact, the rest max |error|)."""
    logits = inputs.logits.detach().flatten(0, 1)
    ckpt = inputs.ckpt_logits.flatten(0, 1)
    actions = torch.where(inputs.mask, inputs.actions, -1).flatten()
    got = triton_bellman.stats(logits, ckpt, actions)
    oracle = reference.bellman_stats(logits.double(), ckpt.double(), actions)
    errors = [(g.double() - o).abs().max().item() for g, o in zip(got, oracle)]
    exact = errors[0] == errors[1] == errors[3] == errors[4] == 0
    ok = exact and errors[2] <= 1e-4 * (1 + oracle[2].abs().max().item())
    return [["triton op stats", dtype_name, f"max/argmax/gathered/target {max(errors[:2] + errors[3:]):.1e}",
             f"shifted_lse {errors[2]:.2e}", "", "PASS" if ok else "FAIL"]]


def time_loss(backend, inputs, bandwidth):
    fn = loss_fn(backend)
    wrt = (inputs.logits, inputs.values)
    forward = median_ms(lambda: fn(inputs))
    loss = [fn(inputs)]
    backward = median_ms(lambda: torch.autograd.grad(loss[0], wrt, retain_graph=True))
    loss.clear()  # frees its saved activations before the next measurement
    both = median_ms(lambda: torch.autograd.grad(fn(inputs), wrt))
    fraction = floor_bytes(inputs, "fwd+bwd") / (both * 1e-3) / bandwidth
    return [f"{forward:.3f}", f"{backward:.3f}", f"{both:.3f}", f"{100 * fraction:.0f}%"]


def kernel_ops(use_cuda_kernel):
    """name -> (forward(logits, ckpt, actions), backward(logits, actions, argmax, shifted_lse, dm, ds, dg))."""
    ops = {"triton": (triton_bellman.stats, triton_bellman.stats_backward)}
    if use_cuda_kernel:
        ops["cuda"] = (lambda logits, ckpt, actions: torch.ops.bcoder.bellman_stats(logits, ckpt, actions, False),
                       torch.ops.bcoder.bellman_stats_backward)
    return ops


def time_kernels(ops, inputs, bandwidth):
    """Each backend's forward and backward op alone, with the loss's gradient pattern: dense rows
    (grad_shifted_lse != 0) on ground-truth programs, two non-zeros elsewhere, padding rows zero."""
    logits = inputs.logits.detach().flatten(0, 1)
    ckpt = inputs.ckpt_logits.flatten(0, 1)
    actions = torch.where(inputs.mask, inputs.actions, -1).flatten()
    dense = (inputs.mask & inputs.is_ground_truth.unsqueeze(1)).flatten()
    rows = []
    for name, (forward, backward) in ops.items():
        _, argmax, shifted_lse, _, _ = forward(logits, ckpt, actions)
        grad_max, grad_gathered = -torch.ones_like(shifted_lse), torch.ones_like(shifted_lse)
        grad_shifted_lse = dense.to(shifted_lse.dtype)
        forward_ms = median_ms(lambda: forward(logits, ckpt, actions))
        backward_ms = median_ms(
            lambda: backward(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered))
        passes = (("forward", forward_ms, floor_bytes(inputs, "forward")),
                  ("backward", backward_ms, floor_bytes(inputs, "backward")))
        for kernel, ms, moved in passes:
            rate = moved / (ms * 1e-3)
            rows.append([name, kernel, f"{ms:.3f}", f"{rate / 1e9:.0f}", f"{100 * rate / bandwidth:.0f}%"])
    return rows


def peak_memory(device, dry_run):
    """Peak bytes of bcoder.bellman_loss_from_hidden vs logits-then-loss, N = 16384, hidden 1024."""
    programs, steps, hidden_size, vocab = (4, 4096, 1024, 151936) if not dry_run else (2, 8, 16, 300)
    inputs = make_hidden_inputs(programs, steps, hidden_size, vocab, torch.bfloat16, device, min_length=steps // 2)
    trained = (inputs.hidden, inputs.lm_head_weight)

    def unfused():
        torch.autograd.grad(logits_then_loss(inputs, backend="triton").loss, trained)

    def fused():
        torch.autograd.grad(bcoder.bellman_loss_from_hidden(*inputs).loss, trained)

    lines = [f"N = {programs * steps}, hidden {hidden_size}, V = {vocab}, bf16; forward + backward, "
             "above the inputs:", ""]
    for name, fn in (("logits then bellman_loss (triton)", unfused), ("bellman_loss_from_hidden", fused)):
        if device != "cuda":  # the dry run still calls both, with the arguments a GPU run passes
            fn()
            lines.append(f"- {name}: ran; peak memory needs CUDA")
            continue
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        lines.append(f"- {name}: {(torch.cuda.max_memory_allocated() - base) / 2**30:.2f} GiB")
    return "\n".join(lines)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def main():
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.dry_run and device != "cuda":
        sys.exit("bench/gpu.py needs a CUDA device; use --dry-run for the CPU smoke test")
    use_cuda_kernel = device == "cuda" and has_cuda_kernel()
    backends = [b for b in args.backends if b != "cuda" or use_cuda_kernel]
    failures = []

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run, Triton interpreter)"
    bandwidth = copy_bandwidth(device)
    print(f"## Fused Bellman loss on {name}\n")
    print(f"torch {torch.__version__}, triton {triton.__version__}; copy_ bandwidth {bandwidth / 1e9:.0f} GB/s "
          f"(device-to-device, read + write).\n")

    parity_shape = (2, 8, 1000) if args.dry_run else (4, 256, 32128)
    print(f"### Parity vs the float64 reference, B x T x V = {' x '.join(map(str, parity_shape))}\n")
    print("Max |error| of each backend, with the same-dtype eager reference's in parentheses.\n")
    rows = parity([b for b in backends if b in ("triton", "cuda")], device, parity_shape, args.dtypes)
    failures += [row for row in rows if row[-1] != "PASS"]
    print(table(["backend", "dtype", "loss", "d logits", "d values", "ok"], rows) + "\n")

    loss_rows, kernel_rows = [], []
    for vocab in args.vocab:
        for dtype_name in args.dtypes:
            inputs = make_inputs(args.programs, args.steps, vocab, DTYPES[dtype_name], device)
            for backend in backends:
                try:
                    loss_rows.append([vocab, dtype_name, backend, *time_loss(backend, inputs, bandwidth)])
                except Exception as error:  # one failing cell (OOM, compile error) must not end the run
                    loss_rows.append([vocab, dtype_name, backend, "error", "", "", ""])
                    failures.append([vocab, dtype_name, backend, repr(error)[:300]])
            ops = kernel_ops(use_cuda_kernel)
            kernel_rows += [[vocab, dtype_name, *row] for row in time_kernels(ops, inputs, bandwidth)]
            del inputs
            if device == "cuda":
                torch.cuda.empty_cache()

    n = args.programs * args.steps
    print(f"### bellman_loss, N = {n} rows ({args.programs} x {args.steps}), medians in ms\n")
    print(table(["V", "dtype", "backend", "forward", "backward", "fwd+bwd", "fwd+bwd % copy BW"], loss_rows) + "\n")
    print("### The ops alone (bytes: forward 2 R V s, backward (N + D) V s; bench/common.py's floor_bytes)\n")
    print(table(["V", "dtype", "backend", "op", "ms", "GB/s", "% copy BW"], kernel_rows) + "\n")
    print("### Peak memory of the fused LM head\n\n" + peak_memory(device, args.dry_run) + "\n")
    if failures:
        print("### Failures\n")
        for failure in failures:
            print("- " + " | ".join(map(str, failure)))
        sys.exit(1)


if __name__ == "__main__":
    main()
