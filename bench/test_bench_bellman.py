"""Kernel microbenchmarks of the fused Bellman loss, as pytest-benchmark tests.

    python -m pytest bench/ --benchmark-disable -q        # smoke test (CI): each timed function once, checked
    python -m pytest bench/ --benchmark-only               # timings, small shapes
    BCODER_BENCH_SHAPES=all python -m pytest bench/ --benchmark-only --benchmark-json=OUT.json

Shapes are chosen by the environment variable BCODER_BENCH_SHAPES: "small" (the default; the
smoke run takes seconds on a 2-core CPU), "design" (the design's N = 4096 rows, V = 32128, fp32,
and bf16 on a GPU; on the CPU the reference alone takes a few seconds per call) or "all" (both).

Two benchmarks, each grouped per shape (benchmark.group is the shape, device included):

- test_bellman_loss: forward + backward (autograd.grad w.r.t. logits and values) of
  bcoder.bellman_loss with each backend available on the machine ("cpp" on the CPU, "cuda" and
  "triton" on a GPU; out of place and with inplace_backward=True) against the eager reference
  (bcoder.reference.bellman_loss) on the same device. Inputs: bench/common.py's builder, 16
  programs, every row real, half of the programs ground truth. The in-place variants get fresh
  logits copied into their scratch buffer before every round, outside the timed region.
  extra_info holds the pass's floor in bytes (common.floor_bytes) and, when timed, the bytes per
  second that floor implies at the median time.
- test_loss_from_hidden: forward + backward (w.r.t. hidden, lm_head_weight and values) of
  bcoder.bellman_loss_from_hidden against logits-then-loss (hidden @ W.T, then bellman_loss),
  backend "cpp" on the CPU, "triton" on a GPU; a quarter of the programs ground truth, lengths
  uniform in [T/2, T], hidden states and weights on common.make_hidden_inputs' exact grid.

Every test also checks what it timed (the loss and every gradient of the last call) against the
float64 reference on the same inputs, so the smoke run fails on a wrong result. GPU cases are
skipped, with the reason, where there is no CUDA device (or no CUDA kernel, or no triton).
Only bench/test_*.py are tests; bench's scripts (bellman.py, gpu.py, ...) are not collected.
"""
import importlib.util
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

if str(Path(__file__).parent) not in sys.path:  # bench/ is not a package (also under --import-mode=importlib)
    sys.path.insert(0, str(Path(__file__).parent))

from common import floor_bytes, logits_then_loss, make_hidden_inputs, make_loss_inputs  # noqa: E402

import bcoder  # noqa: E402
from bcoder import reference  # noqa: E402

SHAPE_SETS = {"small": ("small",), "design": ("design",), "all": ("small", "design")}
SHAPES = os.environ.get("BCODER_BENCH_SHAPES", "small")
if SHAPES not in SHAPE_SETS:
    raise ValueError(f"BCODER_BENCH_SHAPES must be one of {sorted(SHAPE_SETS)}, got {SHAPES!r}")
SIZES = SHAPE_SETS[SHAPES]
HAS_CUDA = torch.cuda.is_available()
DEVICES = ("cpu", "cuda")

# |got - oracle| <= TOLERANCE * (|oracle| + max |oracle|), elementwise, per tensor
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def dtypes(device):
    return (torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,)


def device_skip(device, backend=None):
    """The reason to skip a case on this machine, or None."""
    if device == "cuda" and not HAS_CUDA:
        return "needs a CUDA device"
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        return "needs triton"
    if backend == "cuda":
        from bcoder import ops  # noqa: F401  (loads bcoder._C, which registers torch.ops.bcoder.*)

        if not torch._C._dispatch_has_kernel_for_dispatch_key("bcoder::bellman_stats", "CUDA"):
            return "needs bcoder._C built with CUDA"
    return None


def params(cases, ids):
    """pytest.param per case, with a skip mark where the case cannot run here."""
    out = []
    for case, case_id in zip(cases, ids):
        reason = device_skip(case[0].device, case[1])
        out.append(pytest.param(*case, id=case_id, marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return out


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


_cache = {}


def cached(key, build):
    """build() once per key; holds one key at a time (the tests run shape by shape), so a large
    shape's inputs and oracle are freed when the next shape starts."""
    if key not in _cache:
        _cache.clear()
        _cache[key] = build()
    return _cache[key]


def synchronizer(device):
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def run_benchmark(benchmark, step, setup=None):
    """Times step() with benchmark.pedantic: setup() (untimed) before every round. Two untimed calls
    first, when timing: a warm-up (allocator, Triton's compilation) and one that sizes the rounds
    to pytest-benchmark's --benchmark-max-time (at least --benchmark-min-rounds). With
    --benchmark-disable, step() runs once. Returns step()'s last result."""
    rounds = 1
    if not benchmark.disabled:
        for _ in range(2):
            if setup is not None:
                setup()
            start = time.perf_counter()
            step()
            seconds = time.perf_counter() - start
        min_rounds, max_time = getattr(benchmark, "_min_rounds", 5), getattr(benchmark, "_max_time", 1.0)
        rounds = max(min_rounds, min(1000, math.ceil(max_time / max(seconds, 1e-9))))
    return benchmark.pedantic(step, setup=setup, rounds=rounds)


def record_floor(benchmark, nbytes):
    benchmark.extra_info["floor_bytes"] = nbytes
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["floor_GB_per_s_at_median"] = nbytes / stats.stats.median / 1e9


CHECK_CHUNK = 1 << 22  # elements compared at a time: no [N, V] temporaries


def assert_close_to_oracle(names, got, oracle, dtype):
    """Each tensor of got within TOLERANCE[dtype] of the oracle's, elementwise (NaN fails)."""
    tolerance = TOLERANCE[dtype]
    for name, actual, expected in zip(names, got, oracle):
        assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        actual, expected = actual.detach().reshape(-1), expected.detach().reshape(-1)
        scale = expected.abs().max().item()
        failed, worst = 0, 0.0
        for start in range(0, expected.numel(), CHECK_CHUNK):
            want = expected[start:start + CHECK_CHUNK]
            error = (actual[start:start + CHECK_CHUNK].to(want.dtype) - want).abs()
            failed += int((~(error <= tolerance * (want.abs() + scale))).sum())
            worst = max(worst, error.max().item())
        assert failed == 0, (f"{name}: {failed} of {expected.numel()} elements off the float64 reference by more than "
                             f"{tolerance} x (|expected| + {scale:.3g}); max |error| {worst:.3g}")


def float64_copy(tensor):
    return tensor.detach().double().requires_grad_(tensor.requires_grad)


def oracle_storage(tensors):
    """The oracle's gradients kept as float32 (far below any tolerance; half the memory)."""
    return tuple(t.detach() if t.dim() == 0 else t.detach().float() for t in tensors)


# ----- bellman_loss: forward + backward -----

class LossShape(NamedTuple):
    device: str
    programs: int
    steps: int
    vocab: int
    dtype: torch.dtype

    @property
    def label(self):
        return (f"bellman_loss N={self.programs * self.steps} ({self.programs}x{self.steps}) V={self.vocab} "
                f"{dtype_name(self.dtype)} {self.device}")


LOSS_SIZES = {"small": (16, 16, 4096), "design": (16, 256, 32128)}  # programs, steps (N = 256, 4096), V
LOSS_BACKENDS = {"cpu": ("reference", "cpp"), "cuda": ("reference", "cuda", "triton")}


def loss_cases():
    cases, ids = [], []
    for device in DEVICES:
        for size in SIZES:
            for dtype in dtypes(device):
                shape = LossShape(device, *LOSS_SIZES[size], dtype)
                for backend in LOSS_BACKENDS[device]:
                    for inplace in (False, True) if backend != "reference" else (False,):
                        cases.append((shape, backend, inplace))
                        ids.append(f"{device}-{size}-{dtype_name(dtype)}-{backend}{'-inplace' if inplace else ''}")
    return params(cases, ids)


def loss_and_grads(inputs, backend, inplace=False):
    """(loss, d logits, d values) of one forward + backward."""
    if backend == "reference":
        loss = reference.bellman_loss(*inputs)[0]
    else:
        loss = bcoder.bellman_loss(*inputs, backend=backend, inplace_backward=inplace).loss
    return (loss.detach(), *torch.autograd.grad(loss, (inputs.logits, inputs.values)))


def loss_case(shape):
    def build():
        inputs = make_loss_inputs(shape.programs, shape.steps, shape.vocab, shape.dtype, shape.device)
        oracle = loss_and_grads(type(inputs)(*(float64_copy(t) if t.is_floating_point() else t for t in inputs)),
                                "reference")
        return inputs, oracle_storage(oracle)

    return cached(shape, build)


@pytest.mark.parametrize("shape, backend, inplace", loss_cases())
def test_bellman_loss(benchmark, shape, backend, inplace):
    inputs, oracle = loss_case(shape)
    benchmark.group = shape.label
    sync = synchronizer(shape.device)
    setup = None
    run_inputs = inputs
    if inplace:
        # the backward writes the gradient over the scratch logits: refill them before every round
        scratch = inputs.logits.detach().clone().requires_grad_()
        run_inputs = inputs._replace(logits=scratch)

        def setup():
            with torch.no_grad():
                scratch.copy_(inputs.logits)
            sync()

    def step():
        result = loss_and_grads(run_inputs, backend, inplace)
        sync()
        return result

    got = run_benchmark(benchmark, step, setup)
    record_floor(benchmark, floor_bytes(inputs, "fwd+bwd"))
    assert_close_to_oracle(("loss", "d logits", "d values"), got, oracle, shape.dtype)


# ----- bellman_loss_from_hidden vs logits then bellman_loss -----

class HiddenShape(NamedTuple):
    device: str
    programs: int
    steps: int
    hidden: int
    vocab: int
    dtype: torch.dtype

    @property
    def label(self):
        return (f"loss from hidden N={self.programs * self.steps} ({self.programs}x{self.steps}) H={self.hidden} "
                f"V={self.vocab} {dtype_name(self.dtype)} {self.device}")


HIDDEN_SIZES = {"small": (4, 64, 64, 4096), "design": (8, 512, 512, 32128)}  # B, T (N = 256, 4096), H, V
HIDDEN_BACKEND = {"cpu": "cpp", "cuda": "triton"}
HIDDEN_VARIANTS = ("logits then bellman_loss", "bellman_loss_from_hidden")


def hidden_cases():
    cases, ids = [], []
    for device in DEVICES:
        for size in SIZES:
            for dtype in dtypes(device):
                shape = HiddenShape(device, *HIDDEN_SIZES[size], dtype)
                for variant in HIDDEN_VARIANTS:
                    cases.append((shape, HIDDEN_BACKEND[device], variant))
                    ids.append(f"{device}-{size}-{dtype_name(dtype)}-{variant.replace(' ', '_')}")
    return params(cases, ids)


def hidden_case(shape):
    def build():
        inputs = make_hidden_inputs(shape.programs, shape.steps, shape.hidden, shape.vocab, shape.dtype, shape.device,
                                    ground_truth_fraction=0.25, min_length=shape.steps // 2, exact=True)
        hidden, weight = (t.detach().float().flatten(0, -2) for t in (inputs.hidden, inputs.lm_head_weight))
        # On the grid float32 matmuls give the exact logits; rounded to the dtype as the timed paths round them.
        logits = (hidden @ weight.T).to(shape.dtype).double().requires_grad_()
        ckpt_logits = (inputs.ckpt_hidden.float().flatten(0, -2) @ inputs.ckpt_lm_head_weight.float().T).to(shape.dtype)
        values = float64_copy(inputs.values)
        rows = (shape.programs, shape.steps, shape.vocab)
        loss = reference.bellman_loss(logits.view(rows), ckpt_logits.double().view(rows), values, inputs.actions,
                                      inputs.mask, inputs.rewards.double(), inputs.is_ground_truth)[0]
        d_logits, d_values = torch.autograd.grad(loss, (logits, values))
        del logits, ckpt_logits
        d_logits = d_logits.float()  # through the matmul in float32: ~1e-6 relative, far below the tolerance
        d_hidden = (d_logits @ weight).view(inputs.hidden.shape)
        return inputs, oracle_storage((loss, d_hidden, d_logits.T @ hidden, d_values))

    return cached(shape, build)


@pytest.mark.parametrize("shape, backend, variant", hidden_cases())
def test_loss_from_hidden(benchmark, shape, backend, variant):
    inputs, oracle = hidden_case(shape)
    benchmark.group = shape.label
    sync = synchronizer(shape.device)
    trained = (inputs.hidden, inputs.lm_head_weight, inputs.values)

    def step():
        if variant == "bellman_loss_from_hidden":
            loss = bcoder.bellman_loss_from_hidden(*inputs, backend=backend).loss
        else:
            loss = logits_then_loss(inputs, backend=backend).loss
        result = (loss.detach(), *torch.autograd.grad(loss, trained))
        sync()
        return result

    got = run_benchmark(benchmark, step)
    assert_close_to_oracle(("loss", "d hidden", "d lm_head_weight", "d values"), got, oracle, shape.dtype)
