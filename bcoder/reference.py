"""Plain-PyTorch oracle of B-Coder's math (docs/method.md#the-q-function, docs/method.md#the-loss,
docs/method.md#rewards, docs/method.md#the-fused-op).

Everything here is written for clarity, works in any float dtype (use float64 for the oracle)
and is differentiable by autograd. Every fast path in bcoder is tested against it.

Shapes: B programs, T positions, V vocabulary. Position t of program b holds the decoder's
output for state s_t = (D, a_<t); `actions[b, t]` is a_t; `mask[b, t]` marks real tokens, a
prefix of ones per program whose last True position is the terminal step T.
"""
import math

import torch
import torch.nn.functional as F

OPERATORS = ("conservative", "optimality")  # the Bellman operator of the TD target (docs/method.md#the-loss)
TD_SCALES = ("program", "token")  # L_Q: mean over programs of each one's mean (the paper), or mean over all tokens
CE_SCALES = ("sum", "mean")  # L_ce: mean over ground-truth programs of each one's sum (the paper), or over their tokens
LOGIT_TERMS = ("all", "ce")   # the terms whose gradient reaches the logits: all, or L_ce alone (the control)


def check_operator(operator):
    """ValueError unless `operator` is one of OPERATORS: the one check of the operator argument,
    made by every function that takes it (bcoder.loss, bcoder.fused_head and this module)."""
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")


def check_scales(td_scale, ce_scale, logit_terms="all"):
    """ValueError unless td_scale is one of TD_SCALES, ce_scale one of CE_SCALES and logit_terms one of
    LOGIT_TERMS: the one check of these arguments, made by every function that takes them."""
    if td_scale not in TD_SCALES:
        raise ValueError(f"td_scale must be one of {TD_SCALES}, got {td_scale!r}")
    if ce_scale not in CE_SCALES:
        raise ValueError(f"ce_scale must be one of {CE_SCALES}, got {ce_scale!r}")
    if logit_terms not in LOGIT_TERMS:
        raise ValueError(f"logit_terms must be one of {LOGIT_TERMS}, got {logit_terms!r}")


def softabs(x):
    """softabs(x) = (softplus(x) + softplus(-x)) / 2 - ln 2: smooth |x|, softabs(0) = 0."""
    return (F.softplus(x) + F.softplus(-x)) / 2 - math.log(2.0)


def capped_value(u, r_max=1.0):
    """V(s) = R_max - softabs(u(s)) <= R_max, from the value head's raw output u."""
    return r_max - softabs(u)


def state_value(u, r_max=1.0, value_residual=None):
    """V(s) = R_max - softabs(u(s)) + r(s): the capped value plus, when given, the theta-stage's
    residual r = h1 - h2 added after the cap (paper eq. 16; V may then exceed R_max)."""
    value = capped_value(u, r_max)
    return value if value_residual is None else value + value_residual


def first_argmax(x):
    """Index of the first maximum along the last dim (ties -> lowest index)."""
    return torch.argmax(x, dim=-1)


def advantage(logits, actions, alpha=1.0):
    """A(s, a) = alpha * (l(s, a) - max_b l(s, b)) <= 0, for the taken actions.

    The max is taken as l at its first argmax, so its gradient lands on that one column.
    """
    row_max = logits.gather(-1, first_argmax(logits).unsqueeze(-1)).squeeze(-1)
    taken = logits.gather(-1, actions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return alpha * (taken - row_max)


def q_values(logits, values, actions, alpha=1.0, r_max=1.0, *, value_residual=None):
    """Q(s, a) = A(s, a) + V(s) for the taken actions: [B, T] (V with value_residual, if given)."""
    return advantage(logits, actions, alpha) + state_value(values, r_max, value_residual)


def next_targets(logits, ckpt_logits, values, mask, alpha=1.0, r_max=1.0, operator="conservative", *,
                 value_residual=None):
    """q_next[b, t] = Q(s_{t+1}, a_hat_{t+1}), detached, 0 at the terminal step (docs/method.md#the-loss).

    conservative: a_hat = first argmax of ckpt_logits (of logits when ckpt_logits is None).
    optimality:   a_hat = argmax_a Q(s, a), whose value is V(s) since A <= 0 peaks at 0 there.
    """
    check_operator(operator)
    logits, values = logits.detach(), values.detach()
    value = state_value(values, r_max, None if value_residual is None else value_residual.detach())
    if operator == "conservative":
        target_source = logits if ckpt_logits is None else ckpt_logits.detach()
        q_hat = advantage(logits, first_argmax(target_source), alpha) + value
    else:  # optimality
        q_hat = value
    return torch.where(shift_left(mask), shift_left(q_hat), 0.0)


def shift_left(x):
    """y[:, t] = x[:, t + 1], and 0 (False) at the last position: the next state's entry."""
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


def terminal_rewards(rewards, mask):
    """r_t: the program's reward on its last real token, 0 elsewhere: [B, T]."""
    terminal = mask & ~shift_left(mask)
    return torch.where(terminal, rewards.unsqueeze(1), 0.0)


def bellman_loss(logits, ckpt_logits, values, actions, mask, rewards, is_ground_truth,
                 gamma=0.999, alpha=1.0, beta_adv=0.1, beta_ce=0.5, r_max=1.0,
                 operator="conservative", *, value_residual=None, td_scale="program", ce_scale="sum",
                 logit_terms="all"):
    """L = L_Q + beta_adv * L_adv + beta_ce * L_ce (docs/method.md#the-loss); returns (loss, td, adv, ce).

    delta = r_t + gamma * q_next_t - Q(s_t, a_t), V = R_max - softabs(values) (+ value_residual);
    L_Q   = td_scale "program": mean over programs of the mean over the program's tokens of delta^2
            (paper eq. 15); "token": mean over all real tokens of the batch;
    L_adv = mean over ground-truth programs of sum_t |A(s_t, a_t)|;
    L_ce  = ce_scale "sum": mean over ground-truth programs of sum_t -log softmax(logits)[a_t]
            (paper eq. 1); "mean": mean over ground-truth tokens. 0 without ground truth.
    The phi-stage loss L_V is L_Q with frozen logits (ckpt_logits=None, only values train).
    logit_terms "ce": the logits' gradient comes from L_ce alone (L_Q and L_adv see them detached): the
    CE-only control, whose policy moves as supervised fine-tuning while L_Q still trains the values.
    """
    check_scales(td_scale, ce_scale, logit_terms)
    mask = mask.bool()
    policy_logits = logits if logit_terms == "all" else logits.detach()
    q = q_values(policy_logits, values, actions, alpha=alpha, r_max=r_max, value_residual=value_residual)
    q_next = next_targets(logits, ckpt_logits, values, mask, alpha=alpha, r_max=r_max, operator=operator,
                          value_residual=value_residual)
    delta = terminal_rewards(rewards.to(q.dtype), mask) + gamma * q_next - q
    squared = torch.where(mask, delta.square(), 0.0)
    if td_scale == "program":
        td_loss = (squared.sum(1) / mask.sum(1)).mean()
    else:
        td_loss = squared.sum() / mask.sum()

    gt_tokens = mask & is_ground_truth.bool().unsqueeze(1)
    gt_programs = is_ground_truth.sum().clamp(min=1)
    adv = advantage(policy_logits, actions, alpha)
    adv_loss = torch.where(gt_tokens, adv.abs(), 0.0).sum() / gt_programs
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, actions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ce_total = torch.where(gt_tokens, nll, 0.0).sum()
    ce_loss = ce_total / (gt_programs if ce_scale == "sum" else gt_tokens.sum().clamp(min=1))
    loss = td_loss + beta_adv * adv_loss + beta_ce * ce_loss
    return loss, td_loss, adv_loss, ce_loss


def token_rewards(logits, values, actions, mask, gamma=0.999, alpha=1.0, r_max=1.0, *, value_residual=None):
    """The free reward model r~(s_t, a_t) = Q(s_t, a_t) - gamma * V(s_{t+1}), V(s_{T+1}) = 0
    (V with value_residual, if given).

    Returns [B, T], 0 on padding. R~(W) = sum over t (docs/method.md#rewards).
    """
    mask = mask.bool()
    q = q_values(logits, values, actions, alpha=alpha, r_max=r_max, value_residual=value_residual)
    v_next = torch.where(shift_left(mask), shift_left(state_value(values, r_max, value_residual)), 0.0)
    return torch.where(mask, q - gamma * v_next, 0.0)


def bellman_stats(logits, ckpt_logits, actions):
    """The per-row statistics of the fused-op contract (docs/method.md#the-fused-op), for [N, V] logits.

    Returns (max, argmax, shifted_lse, gathered, target): shifted_lse = log sum_k exp(l_k - max),
    the log-normaliser relative to the max (>= 0; -inf for an all -inf row), which keeps
    cross-entropy = shifted_lse - (gathered - max) exact at any logit offset. Rows with
    actions < 0 are padding and give 0. Statistics are float64 for float64 logits, else float32.
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(acc)
    valid = actions >= 0
    argmax = first_argmax(x)
    row_max = x.gather(-1, argmax.unsqueeze(-1)).squeeze(-1)
    row_max = torch.where(x.isnan().any(dim=-1), float("nan"), row_max)
    shifted_lse = torch.where(row_max == float("-inf"), row_max, torch.logsumexp(x - row_max.unsqueeze(-1), dim=-1))
    gathered = x.gather(-1, actions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    target_index = argmax if ckpt_logits is None else first_argmax(ckpt_logits.to(acc))
    target = x.gather(-1, target_index.unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros((), dtype=acc, device=x.device)
    return (torch.where(valid, row_max, zero), torch.where(valid, argmax, 0),
            torch.where(valid, shifted_lse, zero), torch.where(valid, gathered, zero),
            torch.where(valid, target, zero))


def bellman_stats_backward(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered):
    """Gradient of the statistics w.r.t. [N, V] logits, given the gradients of (max, shifted_lse,
    gathered). With d shifted_lse / dl = softmax(l) - e_j:

    grad[i] = g_slse_i * softmax(l[i]) + g_gathered_i * e_{a_i} + (g_max_i - g_slse_i) * e_{j_i};
    padding rows (actions < 0) are 0.
    """
    acc = shifted_lse.dtype
    x = logits.to(acc)
    row_max = x.gather(-1, argmax.unsqueeze(-1))
    weight = grad_shifted_lse.unsqueeze(-1)
    grad = torch.where(weight != 0, weight * torch.exp(x - row_max - shifted_lse.unsqueeze(-1)), 0.0)
    grad = grad.scatter_add(-1, actions.clamp(min=0).unsqueeze(-1), grad_gathered.unsqueeze(-1))
    grad = grad.scatter_add(-1, argmax.unsqueeze(-1), (grad_max - grad_shifted_lse).unsqueeze(-1))
    grad = torch.where((actions >= 0).unsqueeze(-1), grad, 0.0)
    return grad.to(logits.dtype)
