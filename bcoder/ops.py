"""The fused Bellman op: fake kernels, autograd and backend choice (SPEC section 9).

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
actions_i < 0 is padding: it is not read and its statistics are 0. -inf entries are allowed
(an all -inf row has max = shifted_lse = -inf, argmax 0); a NaN in a row makes its max and
shifted_lse NaN.

Its gradient with respect to the logits, given the gradients of (max, shifted_lse, gathered),
with d shifted_lse / dl = softmax(l) - e_argmax, is

    grad[i] = g_slse_i * softmax(l[i]) + g_gathered_i * e_{actions_i} + (g_max_i - g_slse_i) * e_{argmax_i}

dense only where g_slse_i != 0 (ground-truth rows, through the cross-entropy), otherwise two
non-zeros. `bellman_stats_backward` returns it; `bellman_stats_backward_` writes it over the
logits (inplace_backward=True), so the backward allocates nothing vocabulary-sized. `target` is
a stop-gradient TD target and gets no gradient.

Backends: "cpp" is the C++ kernel on CPU tensors, "cuda" the CUDA C++ kernel (same op, CUDA
dispatch key), "triton" the Triton kernels (`bcoder.kernels.bellman`).
"""
import torch

try:
    from bcoder import _C  # noqa: F401  (registers torch.ops.bcoder.* and the CPU/CUDA kernels)
except ImportError as error:
    raise ImportError(
        "bcoder's native extension bcoder._C is not built; install with "
        "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)"
    ) from error

BACKENDS = ("auto", "cpp", "cuda", "triton", "reference")


def stats_dtype(logits):
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@torch.library.register_fake("bcoder::bellman_stats")
def _stats_fake(logits, ckpt_logits, actions, inplace_backward=False):
    stat = logits.new_empty(logits.shape[0], dtype=stats_dtype(logits))
    argmax = logits.new_empty(logits.shape[0], dtype=torch.int64)
    return stat, argmax, torch.empty_like(stat), torch.empty_like(stat), torch.empty_like(stat)


@torch.library.register_fake("bcoder::bellman_stats_backward")
def _backward_fake(logits, actions, argmax, lse, grad_max, grad_lse, grad_gathered):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


@torch.library.register_fake("bcoder::bellman_stats_backward_")
def _backward_inplace_fake(logits, actions, argmax, lse, grad_max, grad_lse, grad_gathered):
    return None


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


def resolve_backend(backend, device):
    """The concrete backend for `backend` on `device`; ValueError for a bad pair."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cpp" if device.type == "cpu" else "triton"
    if backend == "cpp" and device.type != "cpu":
        raise ValueError(f"backend='cpp' runs on CPU tensors, got {device.type}; use 'cuda' or 'triton'")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend='cuda' runs on CUDA tensors, got {device.type}; use 'cpp'")
    return backend


def bellman_stats(logits, ckpt_logits, actions, inplace_backward=False, backend="cpp"):
    """Row statistics (max, argmax, lse, gathered, target) of [N, V] logits, differentiable."""
    if backend == "triton":
        _load_triton()
        return torch.ops.bcoder.triton_bellman_stats(logits, ckpt_logits, actions, inplace_backward)
    return torch.ops.bcoder.bellman_stats(logits, ckpt_logits, actions, inplace_backward)


def _load_triton():
    """Imports the Triton kernels (once) and registers their autograd like the C++ op's."""
    global _triton_loaded
    if _triton_loaded:
        return
    try:
        from bcoder.kernels import bellman as triton_bellman
    except ImportError as error:
        raise ImportError("backend='triton' needs the triton package: pip install triton") from error
    torch.library.register_autograd(
        "bcoder::triton_bellman_stats",
        _make_stats_backward(triton_bellman.stats_backward, triton_bellman.stats_backward_),
        setup_context=_setup_context)
    _triton_loaded = True


_triton_loaded = False
