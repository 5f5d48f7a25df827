"""The fused Bellman op: fake kernels, autograd and backend choice (docs/method.md#the-fused-op).

Every vocabulary-sized computation of the B-Coder losses reduces to five statistics per row of
the [N, V] logits, computed in one pass over both logits tensors:

    bellman_stats(logits, ckpt_logits, actions, inplace_backward=False)
        -> (max, argmax, shifted_lse, gathered, target)

    max_i         = max_k l[i, k]                 argmax_i   = first k attaining it (torch.argmax)
    shifted_lse_i = log sum_k exp(l[i, k] - max_i)     gathered_i = l[i, actions_i]
    target_i      = l[i, â_i],  â_i = first argmax of ckpt_logits[i]  (â_i = argmax_i without them)

The log-normaliser is kept relative to the max (in [0, log V]) so that the cross-entropy
shifted_lse - (gathered - max) loses nothing to cancellation at large logit offsets. Statistics
are float32 (float64 for float64 logits); bf16/fp16 accumulate in float32. A row with
actions_i < 0 is padding: it is not read and its statistics are 0. -inf entries are allowed (an
all -inf row has max = shifted_lse = -inf, argmax 0); a NaN in a row makes its max and shifted_lse
NaN (its argmax, and a NaN checkpoint row's target, are unspecified); a +inf max makes shifted_lse
NaN (inf - inf). Callers keep actions below V (bcoder.loss checks them): the C++ CPU kernel
rejects an action >= V, while the CUDA and Triton kernels, for which a check would cost a host
sync, read nothing outside the row and gather NaN.

Its gradient with respect to the logits, given the gradients of (max, shifted_lse, gathered),
with d shifted_lse / dl = softmax(l) - e_argmax, is

    grad[i] = g_slse_i * softmax(l[i]) + g_gathered_i * e_{actions_i} + (g_max_i - g_slse_i) * e_{argmax_i}

dense only where g_slse_i != 0 (ground-truth rows, through the cross-entropy), otherwise two
non-zeros. `bellman_stats_backward` returns it; `bellman_stats_backward_` writes it over the
logits (inplace_backward=True), so the backward allocates nothing vocabulary-sized. `target` is
a stop-gradient TD target and gets no gradient.

Backends: "cpp" is the C++ kernel on CPU tensors, "cuda" the CUDA C++ kernel (same op, CUDA
dispatch key, compiled only against a CUDA torch with a CUDA toolkit), "triton" the Triton kernels
(`bcoder.kernels.bellman`, ops `bcoder::triton_bellman_stats*`), "reference" the float64-capable
oracle `bcoder.reference`. This module is the one place a backend name is checked and chosen
(`resolve_backend`) and turned into ops (`backend_ops`); the losses call these two.

The fake kernels check what every backend requires of its arguments (dims, dtypes, [N] lengths,
devices) with torch._check, so that tracing (torch.compile, FakeTensorMode, meta tensors) rejects
bad inputs as the kernels do instead of tracing a graph that fails when run.
"""
from collections.abc import Callable
from typing import NamedTuple

import torch

from bcoder import reference

try:
    from bcoder import _C  # noqa: F401  (registers torch.ops.bcoder.* and the CPU/CUDA kernels)
except ImportError as error:
    raise ImportError(
        "bcoder's native extension bcoder._C is not built; install with "
        "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)"
    ) from error

BACKENDS = ("auto", "cpp", "cuda", "triton", "reference")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def stats_dtype(logits):
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def has_cuda_kernels():
    """Whether bcoder._C was built with the CUDA kernels (a CUDA torch and a CUDA toolkit)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("bcoder::bellman_stats", "CUDA")


# ----- fake kernels: output metadata, after the checks every backend makes -----

def _check_logits(op, name, logits):
    torch._check(logits.dim() == 2, lambda: f"{op}: {name} must be [N, V], got shape {list(logits.shape)}")
    torch._check(logits.dtype in FLOAT_DTYPES,
                 lambda: f"{op}: {name} must be float16, bfloat16, float32 or float64, got {logits.dtype}")


def _check_per_row(op, name, vector, logits, dtype):
    """vector must be [N] (N = logits.shape[0]) of `dtype` on logits' device."""
    def message():
        return (f"{op}: {name} must be [N] = [{logits.shape[0]}] {dtype} on {logits.device}, got shape "
                f"{list(vector.shape)} {vector.dtype} on {vector.device}")
    torch._check(vector.dim() == 1, message)
    torch._check(vector.shape[0] == logits.shape[0], message)
    torch._check(vector.dtype == dtype, message)
    torch._check(vector.device == logits.device, message)


def _check_stats_args(logits, ckpt_logits, actions):
    op = "bcoder::bellman_stats"
    _check_logits(op, "logits", logits)
    if ckpt_logits is not None:
        def message():
            return (f"{op}: ckpt_logits must match logits (shape {list(logits.shape)}, {logits.dtype}, "
                    f"{logits.device}), got shape {list(ckpt_logits.shape)}, {ckpt_logits.dtype}, {ckpt_logits.device}")
        torch._check(ckpt_logits.dim() == 2, message)
        torch._check(ckpt_logits.shape[0] == logits.shape[0], message)
        torch._check(ckpt_logits.shape[1] == logits.shape[1], message)
        torch._check(ckpt_logits.dtype == logits.dtype, message)
        torch._check(ckpt_logits.device == logits.device, message)
    _check_per_row(op, "actions", actions, logits, torch.int64)


def _check_backward_args(op, logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered):
    _check_logits(op, "logits", logits)
    _check_per_row(op, "actions", actions, logits, torch.int64)
    _check_per_row(op, "argmax", argmax, logits, torch.int64)
    acc = stats_dtype(logits)
    for name, vector in (("shifted_lse", shifted_lse), ("grad_max", grad_max), ("grad_shifted_lse", grad_shifted_lse),
                         ("grad_gathered", grad_gathered)):
        _check_per_row(op, name, vector, logits, acc)


@torch.library.register_fake("bcoder::bellman_stats")
def _stats_fake(logits, ckpt_logits, actions, inplace_backward=False):
    _check_stats_args(logits, ckpt_logits, actions)
    stat = logits.new_empty(logits.shape[0], dtype=stats_dtype(logits))
    argmax = logits.new_empty(logits.shape[0], dtype=torch.int64)
    return stat, argmax, torch.empty_like(stat), torch.empty_like(stat), torch.empty_like(stat)


@torch.library.register_fake("bcoder::bellman_stats_backward")
def _backward_fake(logits, actions, argmax, lse, grad_max, grad_lse, grad_gathered):
    _check_backward_args("bcoder::bellman_stats_backward", logits, actions, argmax, lse, grad_max, grad_lse,
                         grad_gathered)
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


@torch.library.register_fake("bcoder::bellman_stats_backward_")
def _backward_inplace_fake(logits, actions, argmax, lse, grad_max, grad_lse, grad_gathered):
    _check_backward_args("bcoder::bellman_stats_backward_", logits, actions, argmax, lse, grad_max, grad_lse,
                         grad_gathered)


# ----- autograd -----

def _setup_context(ctx, inputs, output):
    logits, _, actions, inplace_backward = inputs
    _, argmax, shifted_lse, _, _ = output
    ctx.inplace_backward = inplace_backward
    ctx.save_for_backward(logits, actions, argmax, shifted_lse)


def _make_stats_backward(backward, backward_):
    """The autograd formula of a stats op, given its out-of-place and in-place gradient ops."""

    def stats_backward(ctx, grad_max, grad_argmax, grad_shifted_lse, grad_gathered, grad_target):
        logits, actions, argmax, shifted_lse = ctx.saved_tensors
        args = (actions, argmax, shifted_lse) + tuple(
            torch.zeros_like(shifted_lse) if g is None else g.to(shifted_lse.dtype).contiguous()
            for g in (grad_max, grad_shifted_lse, grad_gathered))
        if ctx.inplace_backward:
            backward_(logits, *args)
            return logits, None, None, None
        return backward(logits, *args), None, None, None

    return stats_backward


torch.library.register_autograd(
    "bcoder::bellman_stats",
    _make_stats_backward(torch.ops.bcoder.bellman_stats_backward, torch.ops.bcoder.bellman_stats_backward_),
    setup_context=_setup_context)


# ----- backend choice -----

def check_backend(backend):
    """ValueError unless `backend` is one of BACKENDS (a name alone; resolve_backend checks it runs)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend, device):
    """The concrete backend ("cpp", "cuda", "triton" or "reference") for `backend` on tensors of
    `device`: "auto" is "cpp" on CPU tensors and "triton" on CUDA tensors. ValueError naming the
    problem for an unknown name or a backend that cannot run there."""
    check_backend(backend)
    device = torch.device(device)
    if backend == "auto":
        return "cpp" if device.type == "cpu" else "triton"
    if backend == "cpp" and device.type != "cpu":
        raise ValueError(f"backend='cpp' runs on CPU tensors, got {device.type} tensors; use 'cuda' or 'triton'")
    if backend == "cuda":
        if not has_cuda_kernels():
            why = (f"torch {torch.__version__} has no CUDA" if torch.version.cuda is None
                   else "no CUDA toolkit (CUDA_HOME) was found when it was built")
            raise ValueError(f"backend='cuda' needs bcoder._C built with its CUDA kernels, and this build has none "
                             f"({why}); use backend='cpp' on CPU tensors or 'triton' on CUDA tensors")
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' runs on CUDA tensors, got {device.type} tensors; use 'cpp'")
    return backend


class BackendOps(NamedTuple):
    """The three ops of a concrete backend, with the signatures of torch.ops.bcoder.bellman_stats*."""
    stats: Callable  # (logits, ckpt_logits, actions, inplace_backward=False) -> 5 statistics, differentiable
    backward: Callable  # (logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered) -> grad
    backward_: Callable  # the same arguments -> None, the gradient written over logits


def backend_ops(backend):
    """The ops of a concrete backend (a result of resolve_backend)."""
    if backend in ("cpp", "cuda"):  # one op; the dispatcher picks the CPU or CUDA kernel
        return BackendOps(torch.ops.bcoder.bellman_stats.default, torch.ops.bcoder.bellman_stats_backward.default,
                          torch.ops.bcoder.bellman_stats_backward_.default)
    if backend == "triton":
        kernels = _load_triton()
        return BackendOps(kernels.stats, kernels.stats_backward, kernels.stats_backward_)
    if backend == "reference":
        return BackendOps(_reference_stats, reference.bellman_stats_backward, _reference_backward_)
    raise ValueError(f"backend_ops needs a concrete backend ('cpp', 'cuda', 'triton' or 'reference'), got "
                     f"{backend!r}; resolve_backend turns {BACKENDS} into one")


def bellman_stats(logits, ckpt_logits, actions, inplace_backward=False, backend="auto"):
    """Row statistics (max, argmax, shifted_lse, gathered, target) of [N, V] logits, differentiable."""
    return backend_ops(resolve_backend(backend, logits.device)).stats(logits, ckpt_logits, actions, inplace_backward)


def _reference_stats(logits, ckpt_logits, actions, inplace_backward=False):
    return reference.bellman_stats(logits, ckpt_logits, actions)  # differentiable by autograd; never in place


def _reference_backward_(logits, *args):
    logits.copy_(reference.bellman_stats_backward(logits, *args))


def _load_triton():
    """Imports the Triton kernels (once), registers their autograd like the C++ op's, returns the module."""
    global _triton_kernels
    if _triton_kernels is None:
        try:
            from bcoder.kernels import bellman as triton_bellman
        except ImportError as error:
            raise ImportError("backend='triton' needs the triton package: pip install triton") from error
        torch.library.register_autograd(
            "bcoder::triton_bellman_stats",
            _make_stats_backward(triton_bellman.stats_backward, triton_bellman.stats_backward_),
            setup_context=_setup_context)
        _triton_kernels = triton_bellman
    return _triton_kernels


_triton_kernels = None
