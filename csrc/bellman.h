// The fused Bellman-loss op: per-row statistics over the vocabulary and their gradient.
// The contract (shapes, dtypes, padding, ties, -inf, NaN) is documented in bcoder/ops.py
// and docs/method.md#the-fused-op.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace bcoder {

// (max, argmax, shifted_lse, gathered, target) of each row of [N, V] logits; see bcoder/ops.py.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bellman_stats_cpu(
    const at::Tensor& logits, const std::optional<at::Tensor>& ckpt_logits, const at::Tensor& actions,
    bool inplace_backward);

// grad = g_slse * softmax(row) + g_gathered * e_action + (g_max - g_slse) * e_argmax, per row.
at::Tensor bellman_stats_backward_cpu(
    const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& argmax, const at::Tensor& shifted_lse,
    const at::Tensor& grad_max, const at::Tensor& grad_shifted_lse, const at::Tensor& grad_gathered);

// The same gradient, written over `logits` itself.
void bellman_stats_backward_cpu_(
    const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& argmax, const at::Tensor& shifted_lse,
    const at::Tensor& grad_max, const at::Tensor& grad_shifted_lse, const at::Tensor& grad_gathered);

}  // namespace bcoder
