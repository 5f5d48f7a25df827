"""The drop-in B-Coder losses: `bellman_loss`, `token_rewards` and the `BellmanLoss` module.

With B programs of T positions over a vocabulary of V (docs/method.md#the-q-function,
docs/method.md#the-loss, docs/method.md#rewards):

    A(s, a) = alpha * (l(s, a) - max_b l(s, b))          advantage, <= 0
    V(s)    = r_max - softabs(u(s)) [+ r(s)]              capped value from the raw head output u, plus
                                                          the optional residual r (value_residual) after the cap
    Q(s, a) = A(s, a) + V(s)
    delta_t = r_t + gamma * SG(Q(s_{t+1}, â_{t+1})) - Q(s_t, a_t),   0 target after the last token
    loss    = L_Q + beta_adv * mean_gt_programs sum_t |A| + beta_ce * L_ce
    L_Q     = mean_programs mean_t delta^2 (td_scale="program", the paper) | mean_tokens delta^2 ("token")
    L_ce    = mean_gt_programs sum_t CE (ce_scale="sum", the paper) | mean_gt_tokens CE ("mean")

â is the first argmax of the frozen checkpoint's logits (conservative operator) or of Q itself
(optimality operator, whose target is then V(s_{t+1})). The vocabulary-sized work is one fused op
(`bcoder.ops`); the rest is O(B*T) and is written here once for every backend.
"""
from typing import NamedTuple

import torch
from torch import nn

from bcoder import ops, reference
from bcoder.ops import FLOAT_DTYPES
from bcoder.reference import check_operator, check_scales, shift_left, state_value, terminal_rewards


class BellmanLossOutput(NamedTuple):
    loss: torch.Tensor  # differentiable w.r.t. logits and values
    td_loss: torch.Tensor  # the parts, detached
    adv_loss: torch.Tensor
    ce_loss: torch.Tensor
    q: torch.Tensor  # [B, T] Q(s_t, a_t) of the taken actions (value_residual included), detached, 0 on padding


def bellman_loss(logits, ckpt_logits, values, actions, mask, rewards, is_ground_truth,
                 gamma=0.999, alpha=1.0, beta_adv=0.1, beta_ce=0.5, r_max=1.0,
                 operator="conservative", backend="auto", inplace_backward=False, *, value_residual=None,
                 td_scale="program", ce_scale="sum", logit_terms="all"):
    """B-Coder's fine-tuning loss L_Q + beta_adv L_adv + beta_ce L_ce (the phi-stage L_V with
    frozen logits and ckpt_logits=None).

    logits [B, T, V]: position t predicts actions[:, t]. ckpt_logits [B, T, V] or None (take the
    target argmax from logits). values [B, T]: raw value-head output u. actions [B, T] int64.
    mask [B, T] bool: a prefix of ones per program, its last True token terminal. rewards [B].
    is_ground_truth [B] bool: programs that get L_adv and L_ce. backend: "auto" | "cpp" | "cuda" |
    "triton" | "reference". inplace_backward: write the logits' gradient over `logits` (saves a
    [B, T, V] buffer; `logits` is garbage after backward).
    value_residual [B, T] (values' dtype) or None: the theta-stage's residual h1 - h2, added after
    the cap, V = r_max - softabs(values) + value_residual (paper eq. 16); it gets a gradient.
    td_scale: "program" (mean over programs of each one's mean squared TD error, paper eq. 15) or
    "token" (mean over the batch's tokens). ce_scale: "sum" (mean over ground-truth programs of each
    one's summed cross-entropy, paper eq. 1) or "mean" (mean over ground-truth tokens). The parts
    td_loss and ce_loss are reported in the chosen scale. logit_terms: "all", or "ce" (the CE-only
    control: L_Q and L_adv reach the values but not the logits, whose gradient is L_ce's alone).
    """
    _check_inputs(logits, values, actions, mask, ckpt_logits, value_residual=value_residual,
                  per_program={"rewards": (rewards, FLOAT_DTYPES), "is_ground_truth": (is_ground_truth, (torch.bool,))})
    check_operator(operator)
    check_scales(td_scale, ce_scale, logit_terms)
    backend = ops.resolve_backend(backend, logits.device)
    hyper = {"gamma": gamma, "alpha": alpha, "beta_adv": beta_adv, "beta_ce": beta_ce, "r_max": r_max,
             "operator": operator, "value_residual": value_residual, "td_scale": td_scale, "ce_scale": ce_scale,
             "logit_terms": logit_terms}
    if backend == "reference":  # the oracle's own formula, differentiated by autograd
        parts = reference.bellman_loss(logits=logits, ckpt_logits=ckpt_logits, values=values, actions=actions,
                                       mask=mask, rewards=rewards, is_ground_truth=is_ground_truth, **hyper)
        q = reference.q_values(logits, values, actions, alpha=alpha, r_max=r_max, value_residual=value_residual)
        return BellmanLossOutput(parts[0], *(p.detach() for p in parts[1:]), torch.where(mask, q, 0.0).detach())

    batch, steps, vocab = logits.shape
    if operator == "optimality":
        ckpt_logits = None  # its target V(s_{t+1}) needs no argmax
    row_max, _, shifted_lse, gathered, target = ops.backend_ops(backend).stats(
        logits.reshape(batch * steps, vocab),
        None if ckpt_logits is None else ckpt_logits.reshape(batch * steps, vocab),
        torch.where(mask, actions, -1).reshape(-1), inplace_backward)
    row_max, shifted_lse, gathered, target = (s.view(batch, steps) for s in (row_max, shifted_lse, gathered, target))
    return losses_from_stats(row_max=row_max, shifted_lse=shifted_lse, gathered=gathered, target=target,
                             values=values, mask=mask, rewards=rewards, is_ground_truth=is_ground_truth, **hyper)


def losses_from_stats(row_max, shifted_lse, gathered, target, values, mask, rewards, is_ground_truth,
                      gamma=0.999, alpha=1.0, beta_adv=0.1, beta_ce=0.5, r_max=1.0, operator="conservative", *,
                      value_residual=None, td_scale="program", ce_scale="sum", logit_terms="all"):
    """The O(B*T) rest of the loss, from the [B, T] row statistics of the fused op (bcoder.ops);
    value_residual, td_scale, ce_scale and logit_terms as in bellman_loss."""
    check_operator(operator)
    check_scales(td_scale, ce_scale, logit_terms)
    dtype = row_max.dtype
    value = state_value(values.to(dtype), r_max, None if value_residual is None else value_residual.to(dtype))
    shifted_logit = gathered - row_max  # l(s, a) - max_b l(s, b): exact at any logit offset
    adv = alpha * (shifted_logit if logit_terms == "all" else shifted_logit.detach())
    q = adv + value
    q_hat = alpha * (target - row_max) + value if operator == "conservative" else value  # optimality: V(s)
    q_next = torch.where(shift_left(mask), shift_left(q_hat), 0.0).detach()
    delta = terminal_rewards(rewards.to(q.dtype), mask) + gamma * q_next - q
    squared = torch.where(mask, delta.square(), 0.0)
    if td_scale == "program":  # every program weighs alike, whatever its length
        td_loss = (squared.sum(1) / mask.sum(1).clamp(min=1)).mean()
    else:
        td_loss = squared.sum() / mask.sum()

    gt_tokens = mask & is_ground_truth.unsqueeze(1)
    gt_programs = is_ground_truth.sum().clamp(min=1)
    adv_loss = torch.where(gt_tokens, adv.abs(), 0.0).sum() / gt_programs
    ce_sum = torch.where(gt_tokens, shifted_lse - shifted_logit, 0.0).sum()
    ce_loss = ce_sum / (gt_programs if ce_scale == "sum" else gt_tokens.sum().clamp(min=1))
    loss = td_loss + beta_adv * adv_loss + beta_ce * ce_loss
    return BellmanLossOutput(loss, td_loss.detach(), adv_loss.detach(), ce_loss.detach(),
                             torch.where(mask, q, 0.0).detach())


def token_rewards(logits, values, actions, mask, gamma=0.999, alpha=1.0, r_max=1.0, backend="auto", *,
                  value_residual=None):
    """The free reward model r~(s_t, a_t) = Q(s_t, a_t) - gamma * V(s_{t+1}), V after the end = 0;
    V = r_max - softabs(values) + value_residual (when given, as in bellman_loss).

    Returns [B, T], 0 on padding; a program's score for ranking is R~(W) = r~.sum(1)
    (docs/method.md#rewards).
    """
    _check_inputs(logits, values, actions, mask, value_residual=value_residual)
    backend = ops.resolve_backend(backend, logits.device)
    if backend == "reference":
        return reference.token_rewards(logits, values, actions, mask, gamma=gamma, alpha=alpha, r_max=r_max,
                                       value_residual=value_residual)
    batch, steps, vocab = logits.shape
    row_max, _, _, gathered, _ = ops.backend_ops(backend).stats(
        logits.reshape(batch * steps, vocab), None, torch.where(mask, actions, -1).reshape(-1))
    dtype = row_max.dtype
    value = state_value(values.to(dtype), r_max, None if value_residual is None else value_residual.to(dtype))
    q = alpha * (gathered - row_max).view(batch, steps) + value
    v_next = torch.where(shift_left(mask), shift_left(value), 0.0)
    return torch.where(mask, q - gamma * v_next, 0.0)


class BellmanLoss(nn.Module):
    """`bellman_loss` with its hyper-parameters held: loss_fn(logits, ckpt_logits, values, actions,
    mask, rewards, is_ground_truth, value_residual=None) -> BellmanLossOutput."""

    def __init__(self, gamma=0.999, alpha=1.0, beta_adv=0.1, beta_ce=0.5, r_max=1.0,
                 operator="conservative", backend="auto", inplace_backward=False, *, td_scale="program",
                 ce_scale="sum", logit_terms="all"):
        super().__init__()
        check_operator(operator)
        check_scales(td_scale, ce_scale, logit_terms)
        ops.check_backend(backend)  # the concrete backend is resolved per call, from the inputs' device
        self.gamma, self.alpha, self.beta_adv, self.beta_ce, self.r_max = gamma, alpha, beta_adv, beta_ce, r_max
        self.operator, self.backend, self.inplace_backward = operator, backend, inplace_backward
        self.td_scale, self.ce_scale, self.logit_terms = td_scale, ce_scale, logit_terms

    def forward(self, logits, ckpt_logits, values, actions, mask, rewards, is_ground_truth, value_residual=None):
        return bellman_loss(logits=logits, ckpt_logits=ckpt_logits, values=values, actions=actions, mask=mask,
                            rewards=rewards, is_ground_truth=is_ground_truth, gamma=self.gamma, alpha=self.alpha,
                            beta_adv=self.beta_adv, beta_ce=self.beta_ce, r_max=self.r_max, operator=self.operator,
                            backend=self.backend, inplace_backward=self.inplace_backward,
                            value_residual=value_residual, td_scale=self.td_scale, ce_scale=self.ce_scale,
                            logit_terms=self.logit_terms)

    def extra_repr(self):
        return (f"gamma={self.gamma}, alpha={self.alpha}, beta_adv={self.beta_adv}, beta_ce={self.beta_ce}, "
                f"r_max={self.r_max}, operator={self.operator!r}, backend={self.backend!r}, "
                f"td_scale={self.td_scale!r}, ce_scale={self.ce_scale!r}, logit_terms={self.logit_terms!r}")


def _check_inputs(logits, values, actions, mask, ckpt_logits=None, per_program=None, value_residual=None):
    """ValueError naming the argument for any malformed input (the shapes of docs/method.md#the-loss).
    value_residual, when given, must match values (shape, dtype, device).

    per_program: {name: (tensor, allowed dtypes)} of the [B] arguments.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a [B, T, V] tensor, got {_describe(logits)}")
    batch, steps, vocab = logits.shape
    if batch == 0 or steps == 0 or vocab == 0:
        raise ValueError(f"logits is empty: shape {tuple(logits.shape)}; need B, T, V >= 1")
    if logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    device = logits.device
    expected = {
        "values": (values, (batch, steps), FLOAT_DTYPES),
        "actions": (actions, (batch, steps), (torch.int64,)),
        "mask": (mask, (batch, steps), (torch.bool,)),
    }
    if value_residual is not None:
        expected["value_residual"] = (value_residual, (batch, steps),
                                      (values.dtype,) if isinstance(values, torch.Tensor) else FLOAT_DTYPES)
    if ckpt_logits is not None:
        expected["ckpt_logits"] = (ckpt_logits, (batch, steps, vocab), (logits.dtype,))
    for name, (tensor, dtypes) in (per_program or {}).items():
        expected[name] = (tensor, (batch,), dtypes)
    for name, (tensor, shape, dtypes) in expected.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (from logits {list(logits.shape)}), "
                             f"got {_describe(tensor)}")
        if tensor.dtype not in dtypes:
            raise ValueError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {tensor.dtype}")
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but logits is on {device}")
    if torch.compiler.is_compiling():
        return  # the data checks below read values: eager only
    checks = (
        (mask[:, 0].all(), "mask: every program needs at least one token (mask[:, 0] must be True)"),
        (~(mask[:, 1:] & ~mask[:, :-1]).any(), "mask must be a prefix of ones per program (a True after a False)"),
        (~(mask & ((actions < 0) | (actions >= vocab))).any(),
         f"actions must lie in [0, {vocab}) on every masked-in position"),
    )
    for ok, message in checks:
        if device.type == "cpu":
            if not ok:
                raise ValueError(message)
        else:
            torch._assert_async(ok, message)  # no host sync on accelerators


def _describe(x):
    return f"a tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else f"{type(x).__name__}"
