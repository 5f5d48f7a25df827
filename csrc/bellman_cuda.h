// Torch-free CUDA kernels of the fused Bellman-loss op (docs/method.md#the-fused-op).
//
// Everything here takes raw device pointers, sizes in elements and a stream, so it compiles
// with nvcc alone (no torch/ATen/c10 headers); bellman_cuda_binding.cpp adapts it to torch.
//
// Layout: logits-like inputs are [N, V] with unit column stride and a row stride (elements,
// >= V) of their own; per-row vectors ([N]) are contiguous. "acc" is the accumulation type:
// double for kFloat64 logits, float otherwise; every acc-typed pointer below points to it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace bcoder {
namespace cuda {

// Element type of the logits (and of the gradient written for them).
enum class LogitsDtype : int { kFloat16, kBFloat16, kFloat32, kFloat64 };

// Forward: for each row i with actions[i] >= 0, with x = logits[i] in acc precision,
//   max[i]         = max_k x[k]                    (NaN if the row holds a NaN)
//   argmax[i]      = first k with x[k] == max[i]   (ties -> lowest k; 0 for an all -inf row)
//   shifted_lse[i] = log sum_k exp(x[k] - max[i])  (in [0, log V]; -inf for an all -inf row;
//                                                   NaN with a NaN, and for a +inf max: inf - inf)
//   gathered[i]    = x[actions[i]]                 (NaN if actions[i] >= V: never read out of row)
//   target[i]      = x[first argmax of ckpt_logits[i]], or max[i] when ckpt_logits is null.
// shifted_lse is relative to the max so that cross-entropy = shifted_lse - (gathered - max)
// keeps full precision at any logit offset.
// Rows with actions[i] < 0 are padding: nothing is read and all five outputs are 0.
// ckpt_logits may be null (its row stride is then ignored). Returns the launch status:
// N == 0 launches nothing; N or V outside [1, 2^31) give cudaErrorInvalidValue.
cudaError_t bellman_stats_forward(
    LogitsDtype dtype, int64_t num_rows, int64_t vocab,
    const void* logits, int64_t logits_row_stride,
    const void* ckpt_logits, int64_t ckpt_row_stride,
    const int64_t* actions,
    void* max, int64_t* argmax, void* shifted_lse, void* gathered, void* target,
    cudaStream_t stream);

// Backward: for each row i with actions[i] >= 0, computed in acc precision and cast once,
//   grad[i, k] = grad_shifted_lse[i] * exp((x[k] - m) - shifted_lse[i])  (only if
//                                           grad_shifted_lse[i] != 0; else 0, no exp)
//              + grad_gathered[i] * [k == actions[i]]
//              + (grad_max[i] - grad_shifted_lse[i]) * [k == argmax[i]],
// with m = x[argmax[i]] (the max, read back from the row) and d shifted_lse / dx = softmax(x) -
// e_argmax; padding rows (actions[i] < 0) are all 0. grad may be logits itself (same pointer and
// row stride): the max is read before the block writes anything, and every other element is read
// and then written by the same thread, so in place is exact. Rows whose grad_shifted_lse is 0
// never read logits.
cudaError_t bellman_stats_backward(
    LogitsDtype dtype, int64_t num_rows, int64_t vocab,
    const void* logits, int64_t logits_row_stride,
    const int64_t* actions, const int64_t* argmax, const void* shifted_lse,
    const void* grad_max, const void* grad_shifted_lse, const void* grad_gathered,
    void* grad, int64_t grad_row_stride,
    cudaStream_t stream);

}  // namespace cuda
}  // namespace bcoder
