"""Triton kernels for the fused Bellman row statistics (docs/method.md#the-fused-op).

For row i of the [N, V] logits l (and the frozen checkpoint logits c), one pass gives

    m_i = max_k l[i, k]                        j_i = first k with l[i, k] == m_i
    s_i = log sum_k exp(l[i, k] - m_i)         g_i = l[i, a_i]
    h_i = l[i, first argmax_k c[i, k]]         (h_i = m_i when c is None)

s_i (shifted_lse) is the log-normaliser relative to the max, in [0, log V], so that the
cross-entropy s_i - (g_i - m_i) loses nothing to cancellation at large logit offsets. An all -inf
row has m = s = -inf (argmax 0); a NaN makes m and s NaN; a +inf max (no NaN) gives m = +inf and
s = NaN (inf - inf), as the reference does.

Since d s_i / dl[i] = softmax(l[i]) - e_{j_i}, the gradient of any loss of (m, s, g), given its
gradients (dm, ds, dg), is

    dl[i, k] = ds_i * exp((l[i, k] - m_i) - s_i) + dg_i * [k == a_i] + (dm_i - ds_i) * [k == j_i]

with m_i = l[i, j_i] read back from the row (subtracting it before s_i keeps the softmax exact at
any offset). Rows with a_i < 0 are padding: their statistics and gradient are 0 (argmax 0). An
action a_i >= V is not checked here (bcoder.loss checks actions; the C++ CPU kernel raises): its
row is never read outside, g_i is NaN and no gradient column is e_{a_i}, as in the CUDA kernel. The
dense term exists only where ds_i != 0 (ground-truth rows with the cross-entropy term); the other
rows read no logits and cost no exp. Statistics are float64 for float64 logits, float32 otherwise.

Ops (the C++ op's schema; autograd is registered by bcoder/ops.py, not here):
    bcoder::triton_bellman_stats(logits, ckpt_logits, actions, inplace_backward=False)
        -> (max, argmax, shifted_lse, gathered, target)     inplace_backward is ignored here: it
                                                            only steers the autograd formula
    bcoder::triton_bellman_stats_backward(logits, actions, argmax, shifted_lse, grad_max,
                                          grad_shifted_lse, grad_gathered) -> grad
    bcoder::triton_bellman_stats_backward_(...same...) -> ()   writes grad into `logits`

CPU tensors run under Triton's interpreter, switched on by the environment variable
TRITON_INTERPRET=1, which must be set before this module is imported (Triton reads it when the
kernels are decorated; setting it before importing triton is the safe habit). The interpreter is
slow and meant for tests. It runs the kernels eagerly only: torch.compile and the AOT-dispatch
checks of torch.library.opcheck need a GPU, where wrap_triton makes the launches traceable.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

LOG2E = tl.constexpr(math.log2(math.e))

_ACC_DTYPE = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


@triton.jit
def _bellman_stats_forward_kernel(
    logits_ptr,
    logits_row_stride,
    ckpt_ptr,
    ckpt_row_stride,
    actions_ptr,
    max_ptr,
    argmax_ptr,
    shifted_lse_ptr,
    gathered_ptr,
    target_ptr,
    V,
    HAS_CKPT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row: online max / first argmax / shifted logsumexp over BLOCK-wide chunks.

    The running sum s holds sum_k exp(l[k] - shift) with shift = m, or 0 while m is infinite
    (an all -inf prefix, or a +inf entry), so -inf - -inf never reaches exp. With m finite at the
    end, shift = m and shifted_lse = log s exactly; an all -inf row leaves s = 0, log s = -inf. A
    NaN entry makes s NaN, which is how the row's max and shifted_lse are forced to NaN.
    """
    row = tl.program_id(0).to(tl.int64)
    action = tl.load(actions_ptr + row)
    acc_dtype = max_ptr.dtype.element_ty
    if action < 0:
        tl.store(max_ptr + row, tl.zeros((), acc_dtype))
        tl.store(argmax_ptr + row, tl.zeros((), tl.int64))
        tl.store(shifted_lse_ptr + row, tl.zeros((), acc_dtype))
        tl.store(gathered_ptr + row, tl.zeros((), acc_dtype))
        tl.store(target_ptr + row, tl.zeros((), acc_dtype))
        return

    logits_row = logits_ptr + row * logits_row_stride
    ckpt_row = ckpt_ptr + row * ckpt_row_stride
    # Built in the accumulator dtype so that the float64 path keeps a float64 constant.
    log2e = tl.full((), LOG2E, acc_dtype)
    cols = tl.arange(0, BLOCK)

    row_max = tl.full((), float("-inf"), acc_dtype)
    row_argmax = tl.zeros((), tl.int64)
    sum_exp = tl.zeros((), acc_dtype)
    ckpt_max = tl.full((), float("-inf"), acc_dtype)
    ckpt_argmax = tl.zeros((), tl.int64)
    for start in tl.range(0, V, BLOCK):
        offsets = start + cols
        in_row = offsets < V
        x = tl.load(logits_row + offsets, mask=in_row, other=float("-inf")).to(acc_dtype)
        block_max, block_argmax = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
        # Strictly greater: an equal maximum in a later block keeps the earlier (lower) index.
        row_argmax = tl.where(block_max > row_max, start + block_argmax.to(tl.int64), row_argmax)
        new_max = tl.maximum(row_max, block_max)
        new_shift = tl.where(tl.abs(new_max) == float("inf"), tl.zeros((), acc_dtype), new_max)
        # Rescale by exp(row_max - new_shift), not exp(shift - new_shift): while row_max is -inf
        # the sum is 0 and the factor must be 0, not exp(+huge) = inf.
        sum_exp = sum_exp * tl.exp2((row_max - new_shift) * log2e) + tl.sum(
            tl.exp2((x - new_shift) * log2e), axis=0
        )
        row_max = new_max
        if HAS_CKPT:
            c = tl.load(ckpt_row + offsets, mask=in_row, other=float("-inf")).to(acc_dtype)
            c_max, c_argmax = tl.max(c, axis=0, return_indices=True, return_indices_tie_break_left=True)
            ckpt_argmax = tl.where(c_max > ckpt_max, start + c_argmax.to(tl.int64), ckpt_argmax)
            ckpt_max = tl.maximum(ckpt_max, c_max)

    # A +inf max was never a shift (s summed exp(l - 0) = inf); relative to it the normaliser is
    # inf - inf = NaN, the reference's value, while the max itself stays +inf.
    nan = tl.full((), float("nan"), acc_dtype)
    shifted_lse = tl.where(row_max == float("inf"), nan, tl.log2(sum_exp) / log2e)
    row_max = tl.where(sum_exp != sum_exp, sum_exp, row_max)
    # An action >= V (callers check actions; the kernel does not) reads nothing outside the row: NaN.
    gathered = tl.load(logits_row + action, mask=action < V, other=float("nan")).to(acc_dtype)
    if HAS_CKPT:
        # A NaN checkpoint row leaves its argmax unspecified; never read outside the row.
        target = tl.load(logits_row + ckpt_argmax, mask=ckpt_argmax < V, other=float("nan")).to(acc_dtype)
    else:
        target = row_max
    tl.store(max_ptr + row, row_max)
    tl.store(argmax_ptr + row, row_argmax)
    tl.store(shifted_lse_ptr + row, shifted_lse)
    tl.store(gathered_ptr + row, gathered)
    tl.store(target_ptr + row, target)


@triton.jit
def _bellman_stats_backward_kernel(
    logits_ptr,
    logits_row_stride,
    grad_ptr,
    grad_row_stride,
    actions_ptr,
    argmax_ptr,
    shifted_lse_ptr,
    grad_max_ptr,
    grad_shifted_lse_ptr,
    grad_gathered_ptr,
    V,
    BLOCK: tl.constexpr,
):
    """One program per row: grad = ds * exp((l - m) - s) + dg * e_a + (dm - ds) * e_j, cast once.

    The sparse coefficients are summed in acc precision with the dense term before the cast.
    grad_ptr may alias logits_ptr (the in-place variant): each chunk is loaded before it is
    stored, by the same program, and m = l[j] is read before the first store. Padding rows get
    zero coefficients, so they write zeros and read only the [N] vectors; so do rows with ds = 0.
    """
    row = tl.program_id(0).to(tl.int64)
    action = tl.load(actions_ptr + row)
    acc_dtype = shifted_lse_ptr.dtype.element_ty
    zero = tl.zeros((), acc_dtype)
    is_token = action >= 0
    grad_shifted_lse = tl.where(is_token, tl.load(grad_shifted_lse_ptr + row), zero)
    grad_gathered = tl.where(is_token, tl.load(grad_gathered_ptr + row), zero)
    grad_max = tl.where(is_token, tl.load(grad_max_ptr + row), zero)
    argmax = tl.load(argmax_ptr + row)
    log2e = tl.full((), LOG2E, acc_dtype)

    logits_row = logits_ptr + row * logits_row_stride
    grad_row = grad_ptr + row * grad_row_stride
    if grad_shifted_lse != 0:
        row_max = tl.load(logits_row + argmax).to(acc_dtype)
        shifted_lse = tl.load(shifted_lse_ptr + row)
        # In place, the chunk holding column j is overwritten by some warp of this program; no
        # warp may store before every warp has read the max.
        tl.debug_barrier()
    else:
        row_max = zero
        shifted_lse = zero
    cols = tl.arange(0, BLOCK)
    for start in tl.range(0, V, BLOCK):
        offsets = start + cols
        in_row = offsets < V
        if grad_shifted_lse != 0:
            # Columns past the row read -inf: exp2(-inf) = 0, no overflow in lanes never stored.
            x = tl.load(logits_row + offsets, mask=in_row, other=float("-inf")).to(acc_dtype)
            grad = grad_shifted_lse * tl.exp2(((x - row_max) - shifted_lse) * log2e)
        else:
            grad = tl.zeros((BLOCK,), acc_dtype)
        grad += tl.where(offsets == action, grad_gathered, zero)
        grad += tl.where(offsets == argmax, grad_max - grad_shifted_lse, zero)
        tl.store(grad_row + offsets, grad.to(grad_ptr.dtype.element_ty), mask=in_row)


def _launch_config(V, dtype):
    """(BLOCK, num_warps): one chunk for small rows, else chunks big enough to amortise the
    per-chunk reductions, capped so a thread holds 8-16 elements of each input."""
    cap = {torch.float64: 2048, torch.float32: 4096}.get(dtype, 8192)
    block = min(triton.next_power_of_2(V), cap)
    num_warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    return block, num_warps


def _check_logits(name, logits):
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in _ACC_DTYPE:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} must have V >= 1 columns")
    if logits.stride(1) != 1:
        raise ValueError(f"{name} must have a contiguous last dim (stride(1) == 1), got {logits.stride()}")
    if logits.device.type == "cpu" and not _interpreting():
        raise ValueError(
            "Triton bellman kernels got CPU tensors but Triton's interpreter is off: "
            "set TRITON_INTERPRET=1 before importing triton, or use a CUDA device"
        )


def _check_vector(name, vector, n, dtype, device):
    """Checks an [N] argument and returns it contiguous: the kernels index it by row."""
    if vector.shape != (n,) or vector.dtype != dtype or vector.device != device:
        raise ValueError(
            f"{name} must be [{n}] {dtype} on {device}, got {tuple(vector.shape)} {vector.dtype} on {vector.device}"
        )
    return vector.contiguous()


def _interpreting():
    return not isinstance(_bellman_stats_forward_kernel, triton.runtime.JITFunction)


def _launch(kernel, rows, *args, **meta):
    """Launch `kernel` on a grid of one program per row.

    Under the interpreter, wrap_triton hands back the raw kernel, which would run on fake
    tensors too (opcheck, tracing); those need only the outputs' metadata, so skip them.
    """
    if _interpreting() and any(is_fake(arg) for arg in args if isinstance(arg, torch.Tensor)):
        return
    wrap_triton(kernel)[(rows,)](*args, **meta)


@triton_op("bcoder::triton_bellman_stats", mutates_args=())
def _bellman_stats(
    logits: torch.Tensor,
    ckpt_logits: Optional[torch.Tensor],
    actions: torch.Tensor,
    inplace_backward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max, argmax, shifted_lse, gathered, target) per row of [N, V] logits; see the module
    docstring. inplace_backward only selects the in-place backward in bcoder/ops.py's autograd."""
    _check_logits("logits", logits)
    n, vocab = logits.shape
    if ckpt_logits is not None:
        _check_logits("ckpt_logits", ckpt_logits)
        if (ckpt_logits.shape, ckpt_logits.dtype, ckpt_logits.device) != (logits.shape, logits.dtype, logits.device):
            raise ValueError("ckpt_logits must match logits in shape, dtype and device")
    actions = _check_vector("actions", actions, n, torch.int64, logits.device)

    acc_dtype = _ACC_DTYPE[logits.dtype]
    row_max = logits.new_empty(n, dtype=acc_dtype)
    argmax = logits.new_empty(n, dtype=torch.int64)
    shifted_lse = logits.new_empty(n, dtype=acc_dtype)
    gathered = logits.new_empty(n, dtype=acc_dtype)
    target = logits.new_empty(n, dtype=acc_dtype)
    if n > 0:
        block, num_warps = _launch_config(vocab, logits.dtype)
        has_ckpt = ckpt_logits is not None
        # Without a checkpoint the kernel never touches its pointer; pass logits as a stand-in.
        ckpt = ckpt_logits if has_ckpt else logits
        _launch(
            _bellman_stats_forward_kernel, n,
            logits, logits.stride(0), ckpt, ckpt.stride(0), actions,
            row_max, argmax, shifted_lse, gathered, target, vocab,
            HAS_CKPT=has_ckpt, BLOCK=block, num_warps=num_warps,
        )
    return row_max, argmax, shifted_lse, gathered, target


def _check_backward_args(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered):
    """Checks the backward's arguments and returns its [N] ones contiguous."""
    _check_logits("logits", logits)
    n = logits.shape[0]
    acc_dtype = _ACC_DTYPE[logits.dtype]
    stats = {"shifted_lse": shifted_lse, "grad_max": grad_max, "grad_shifted_lse": grad_shifted_lse,
             "grad_gathered": grad_gathered}
    return (
        _check_vector("actions", actions, n, torch.int64, logits.device),
        _check_vector("argmax", argmax, n, torch.int64, logits.device),
        *(_check_vector(name, vector, n, acc_dtype, logits.device) for name, vector in stats.items()),
    )


def _launch_backward(logits, grad, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered):
    n, vocab = logits.shape
    if n == 0:
        return
    block, num_warps = _launch_config(vocab, logits.dtype)
    _launch(
        _bellman_stats_backward_kernel, n,
        logits, logits.stride(0), grad, grad.stride(0), actions, argmax, shifted_lse,
        grad_max, grad_shifted_lse, grad_gathered, vocab,
        BLOCK=block, num_warps=num_warps,
    )


@triton_op("bcoder::triton_bellman_stats_backward", mutates_args=())
def _bellman_stats_backward(
    logits: torch.Tensor,
    actions: torch.Tensor,
    argmax: torch.Tensor,
    shifted_lse: torch.Tensor,
    grad_max: torch.Tensor,
    grad_shifted_lse: torch.Tensor,
    grad_gathered: torch.Tensor,
) -> torch.Tensor:
    """Gradient [N, V] (logits' dtype, contiguous) of the statistics; see the module docstring."""
    vectors = _check_backward_args(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered)
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _launch_backward(logits, grad, *vectors)
    return grad


@triton_op("bcoder::triton_bellman_stats_backward_", mutates_args={"logits"})
def _bellman_stats_backward_(
    logits: torch.Tensor,
    actions: torch.Tensor,
    argmax: torch.Tensor,
    shifted_lse: torch.Tensor,
    grad_max: torch.Tensor,
    grad_shifted_lse: torch.Tensor,
    grad_gathered: torch.Tensor,
) -> None:
    """The backward written into `logits` itself: saves the [N, V] gradient allocation."""
    vectors = _check_backward_args(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered)
    _launch_backward(logits, logits, *vectors)


stats = torch.ops.bcoder.triton_bellman_stats.default
stats_backward = torch.ops.bcoder.triton_bellman_stats_backward.default
stats_backward_ = torch.ops.bcoder.triton_bellman_stats_backward_.default
