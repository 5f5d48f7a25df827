"""The B-Coder loss straight from the decoder's hidden states: the LM-head matmul fused with the
Bellman row statistics, chunk by chunk, so that the [N, V] logits never exist
(docs/method.md#the-fused-op).

    bellman_loss_from_hidden(hidden, W, ckpt_hidden, W_ckpt, values, actions, ...)
        == bellman_loss(hidden @ W.T, ckpt_hidden @ W_ckpt.T, values, actions, ...)

Forward. The real (mask) rows are cut into chunks of C rows. Each chunk's logits l = h W^T (and
the checkpoint's c = h_ckpt W_ckpt^T) come from one matmul and are reduced at once by the fused op
(bcoder.ops) to the row statistics: max m, argmax j, shifted_lse s, gathered g = l[a], target.
Only the [N] statistics outlive the chunk. `losses_from_stats` turns them into the loss (O(B*T),
ordinary autograd, which also gives the gradient of values).

Backward. The tail hands back (dm, ds, dg) per row. The gradient of row i's logits is

    dl_i = ds_i * softmax(l_i) + dg_i * e_{a_i} + (dm_i - ds_i) * e_{j_i}

and through l_i = W h_i:  d h_i = W^T dl_i,  d W += dl_i h_i^T.

- Dense rows (ds_i != 0: ground-truth tokens, through the cross-entropy) recompute their chunk's
  logits, turn them into dl in place with the fused backward op, then d h = dl W, d W += dl^T h.
- Every other row has exactly two non-zeros, so no vocabulary-sized work at all:
      d h_i = dg_i W[a_i] + (dm_i - ds_i) W[j_i],   d W[a_i] += dg_i h_i,   d W[j_i] += (dm_i - ds_i) h_i
  (a gather and an index_add of O(H) per row).
Generated programs therefore cost one forward matmul and nothing vocabulary-sized in backward;
with hidden and W frozen (the phi stage, only values train) the backward does no LM-head work.

Precision. Logits are formed in hidden's dtype, as `hidden @ W.T` would be; statistics are float32
(float64 for float64 inputs). d W is accumulated over chunks and repeated tokens in float32 for
bf16/fp16 weights (one float32 [V, H] buffer during backward), the sparse rows' terms in float32.

Memory beyond inputs and gradients: one chunk of logits (two with checkpoint logits) of
chunk_rows x V, by default at most CHUNK_BYTES each, and O(N H) for the sparse rows' terms.

The checkpoint (ckpt_hidden, ckpt_lm_head_weight) is the frozen theta_ckpt: it only picks the
target action of a stop-gradient target, so it gets no gradient even if it requires grad, just as
ckpt_logits gets none from bellman_loss. Counting real rows and splitting dense from sparse ones
reads [N] masks on the host (one sync each on an accelerator).
"""
import torch

from bcoder import ops
from bcoder.loss import _check_inputs, _describe, losses_from_stats
from bcoder.ops import FLOAT_DTYPES
from bcoder.reference import check_operator, check_scales

CHUNK_BYTES = 64 * 2**20  # default bound on one chunk of logits


def bellman_loss_from_hidden(hidden, lm_head_weight, ckpt_hidden, ckpt_lm_head_weight, values, actions, mask,
                             rewards, is_ground_truth, gamma=0.999, alpha=1.0, beta_adv=0.1, beta_ce=0.5,
                             r_max=1.0, operator="conservative", backend="auto", chunk_rows=None, *,
                             value_residual=None, td_scale="program", ce_scale="sum", logit_terms="all"):
    """`bellman_loss(hidden @ lm_head_weight.T, ckpt_hidden @ ckpt_lm_head_weight.T, ...)` without
    materialising the logits; returns a BellmanLossOutput (loss, td_loss, adv_loss, ce_loss, q).

    hidden [B, T, H]: the decoder's last hidden states, position t predicting actions[:, t].
    lm_head_weight [V, H], same dtype and device. ckpt_hidden [B, T, H] or None (take the target
    argmax from the trained logits). ckpt_lm_head_weight [V, H] or None (the same weight as
    lm_head_weight). values, actions, mask, rewards, is_ground_truth, the hyper-parameters and
    value_residual, td_scale, ce_scale, logit_terms as in bcoder.bellman_loss. Gradients reach hidden,
    lm_head_weight, values and value_residual; the checkpoint tensors
    are frozen (never get one). backend: "auto" | "cpp" | "cuda" | "triton" | "reference", the
    fused op reducing each chunk. chunk_rows: rows per chunk (default: logits chunks of at most
    CHUNK_BYTES).
    """
    check_hidden_inputs(hidden=hidden, lm_head_weight=lm_head_weight, ckpt_hidden=ckpt_hidden,
                        ckpt_lm_head_weight=ckpt_lm_head_weight, values=values, actions=actions, mask=mask,
                        rewards=rewards, is_ground_truth=is_ground_truth, value_residual=value_residual)
    check_operator(operator)
    check_scales(td_scale, ce_scale, logit_terms)
    backend = ops.resolve_backend(backend, hidden.device)
    vocab = lm_head_weight.shape[0]
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // (vocab * hidden.element_size()))
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")

    batch, steps, hidden_size = hidden.shape
    if operator == "optimality" or ckpt_hidden is None:
        ckpt_hidden = ckpt_weight = None  # the optimality target V(s_{t+1}) needs no argmax
    else:
        ckpt_hidden = ckpt_hidden.detach().reshape(batch * steps, hidden_size)
        ckpt_weight = (lm_head_weight if ckpt_lm_head_weight is None else ckpt_lm_head_weight).detach()
    row_max, shifted_lse, gathered, target = _LinearBellmanStats.apply(  # apply takes no keywords
        hidden.reshape(batch * steps, hidden_size), lm_head_weight, ckpt_hidden, ckpt_weight,
        torch.where(mask, actions, -1).reshape(-1), backend, chunk_rows)
    row_max, shifted_lse, gathered, target = (s.view(batch, steps) for s in (row_max, shifted_lse, gathered, target))
    return losses_from_stats(row_max=row_max, shifted_lse=shifted_lse, gathered=gathered, target=target,
                             values=values, mask=mask, rewards=rewards, is_ground_truth=is_ground_truth,
                             gamma=gamma, alpha=alpha, beta_adv=beta_adv, beta_ce=beta_ce, r_max=r_max,
                             operator=operator, value_residual=value_residual, td_scale=td_scale, ce_scale=ce_scale,
                             logit_terms=logit_terms)


def check_hidden_inputs(hidden, lm_head_weight, ckpt_hidden, ckpt_lm_head_weight, values, actions, mask,
                        rewards, is_ground_truth, value_residual=None):
    """ValueError naming the argument for any malformed input of bellman_loss_from_hidden."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or 0 in hidden.shape:
        raise ValueError(f"hidden must be a non-empty [B, T, H] tensor, got {_describe(hidden)}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise ValueError(f"hidden must be float16, bfloat16, float32 or float64, got {hidden.dtype}")
    batch, steps, hidden_size = hidden.shape
    if not (isinstance(lm_head_weight, torch.Tensor) and lm_head_weight.dim() == 2
            and lm_head_weight.shape[0] >= 1 and lm_head_weight.shape[1] == hidden_size):
        raise ValueError(f"lm_head_weight must have shape [V, {hidden_size}] (from hidden {list(hidden.shape)}), "
                         f"got {_describe(lm_head_weight)}")
    vocab = lm_head_weight.shape[0]
    expected = {"lm_head_weight": (lm_head_weight, (vocab, hidden_size)),
                "ckpt_hidden": (ckpt_hidden, (batch, steps, hidden_size)),
                "ckpt_lm_head_weight": (ckpt_lm_head_weight, (vocab, hidden_size))}
    for name, (tensor, shape) in expected.items():
        if tensor is None and name != "lm_head_weight":
            continue  # the optional checkpoint tensors
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (from hidden {list(hidden.shape)} and "
                             f"lm_head_weight {list(lm_head_weight.shape)}), got {_describe(tensor)}")
        if tensor.dtype != hidden.dtype:
            raise ValueError(f"{name} must have hidden's dtype {hidden.dtype}, got {tensor.dtype}")
        if tensor.device != hidden.device:
            raise ValueError(f"{name} is on {tensor.device} but hidden is on {hidden.device}")
    # The [B, T] and [B] arguments are checked as bellman_loss checks them, against a stand-in for
    # the [B, T, V] logits that has their shape, dtype and device but no memory.
    logits_like = hidden.new_zeros(()).expand(batch, steps, vocab)
    _check_inputs(logits_like, values, actions, mask, value_residual=value_residual,
                  per_program={"rewards": (rewards, FLOAT_DTYPES), "is_ground_truth": (is_ground_truth, (torch.bool,))})


def _logits_grad(backend, logits, *args):
    """The gradient of a chunk's recomputed logits, written over them (they are scratch: no second
    [C, V] buffer), by the concrete backend's in-place backward op."""
    ops.backend_ops(backend).backward_(logits, *args)
    return logits


def _row_chunks(selected, chunk_rows):
    """Indices of the True entries of `selected`, in chunks of at most chunk_rows (no chunk for
    none: split would give one empty chunk, and an empty matmul)."""
    rows = selected.nonzero().squeeze(1)
    return rows.split(chunk_rows) if rows.numel() else ()


class _LinearBellmanStats(torch.autograd.Function):
    """(max, shifted_lse, gathered, target) [N] of the logits hidden @ weight.T, chunk by chunk;
    see the module docstring. Rows with actions < 0 are padding: never computed, statistics 0."""

    @staticmethod
    def forward(ctx, hidden, weight, ckpt_hidden, ckpt_weight, actions, backend, chunk_rows):
        stats_op = ops.backend_ops(backend).stats
        n = actions.shape[0]
        stat_dtype = ops.stats_dtype(hidden)
        row_max, shifted_lse, gathered, target = (hidden.new_zeros(n, dtype=stat_dtype) for _ in range(4))
        argmax = hidden.new_zeros(n, dtype=torch.int64)
        for rows in _row_chunks(actions >= 0, chunk_rows):
            logits = hidden[rows] @ weight.T
            ckpt_logits = None if ckpt_hidden is None else ckpt_hidden[rows] @ ckpt_weight.T
            stats = stats_op(logits, ckpt_logits, actions[rows])
            for out, stat in zip((row_max, argmax, shifted_lse, gathered, target), stats):
                out[rows] = stat
        ctx.save_for_backward(hidden, weight, actions, argmax, shifted_lse)
        ctx.backend, ctx.chunk_rows = backend, chunk_rows
        ctx.mark_non_differentiable(target)
        return row_max, shifted_lse, gathered, target

    @staticmethod
    def backward(ctx, grad_max, grad_shifted_lse, grad_gathered, grad_target):
        hidden, weight, actions, argmax, shifted_lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        no_grads = (None,) * 5  # ckpt_hidden, ckpt_weight, actions, backend, chunk_rows
        if not (need_hidden or need_weight):
            return (None, None) + no_grads
        grad_max, grad_shifted_lse, grad_gathered = (
            torch.zeros_like(shifted_lse) if g is None else g.to(shifted_lse.dtype)
            for g in (grad_max, grad_shifted_lse, grad_gathered))
        real = actions >= 0
        dense = real & (grad_shifted_lse != 0)
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None

        for rows in _row_chunks(dense, ctx.chunk_rows):
            rows_hidden = hidden[rows]
            grad_logits = _logits_grad(ctx.backend, rows_hidden @ weight.T, actions[rows], argmax[rows],
                                       shifted_lse[rows], grad_max[rows], grad_shifted_lse[rows], grad_gathered[rows])
            if need_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if need_weight:
                if grad_weight.dtype == grad_logits.dtype:
                    grad_weight.addmm_(grad_logits.T, rows_hidden)
                else:
                    grad_weight += grad_logits.T @ rows_hidden

        rows = (real & ~dense).nonzero().squeeze(1)
        columns = torch.stack((actions[rows], argmax[rows]))  # [2, S]: the two non-zeros of each row
        coefficients = torch.stack((grad_gathered[rows], grad_max[rows] - grad_shifted_lse[rows])).unsqueeze(-1)
        if need_hidden:
            grad_hidden[rows] = (coefficients * weight[columns].to(acc_dtype)).sum(0).to(hidden.dtype)
        if need_weight:
            terms = coefficients * hidden[rows].to(acc_dtype)  # [2, S, H]
            grad_weight.index_add_(0, columns.flatten(), terms.flatten(0, 1))
            grad_weight = grad_weight.to(weight.dtype)
        return (grad_hidden, grad_weight) + no_grads
