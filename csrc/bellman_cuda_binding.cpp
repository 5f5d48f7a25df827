// CUDA kernels of the bcoder ops (schemas in ops.cpp): argument checks, output allocation and
// the current stream around the torch-free launchers of bellman_cuda.h. setup.py compiles this
// file only when the installed torch has CUDA. The stream comes from c10/cuda/CUDAStream.h
// (at::cuda::getCurrentCUDAStream is the same function) to keep cuBLAS/cuSPARSE headers out.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <optional>
#include <tuple>

#include "bellman_cuda.h"

namespace bcoder {
namespace {

cuda::LogitsDtype logits_dtype(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kHalf:
      return cuda::LogitsDtype::kFloat16;
    case at::kBFloat16:
      return cuda::LogitsDtype::kBFloat16;
    case at::kFloat:
      return cuda::LogitsDtype::kFloat32;
    case at::kDouble:
      return cuda::LogitsDtype::kFloat64;
    default:
      TORCH_CHECK(false, "bcoder: logits must be float16, bfloat16, float32 or float64, got ", logits.scalar_type());
  }
}

// Statistics and their gradients are float64 for float64 logits, float32 otherwise.
at::ScalarType acc_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// [N, V] with unit column stride (rows may have any stride), as every backend requires.
void check_logits(const at::Tensor& logits, const char* name) {
  TORCH_CHECK(logits.is_cuda(), "bcoder: ", name, " must be a CUDA tensor");
  TORCH_CHECK(logits.dim() == 2, "bcoder: ", name, " must be [N, V], got shape ", logits.sizes());
  TORCH_CHECK(logits.size(1) > 0 || logits.size(0) == 0, "bcoder: ", name, " has an empty vocabulary");
  TORCH_CHECK(logits.size(0) <= INT_MAX && logits.size(1) <= INT_MAX, "bcoder: ", name,
              " must have fewer than 2^31 rows and columns, got shape ", logits.sizes());
  TORCH_CHECK(logits.size(1) <= 1 || logits.stride(1) == 1, "bcoder: ", name,
              " must have unit column stride, got strides ", logits.strides());
  logits_dtype(logits);
}

// A contiguous [N] tensor of `dtype` on `logits`' device.
at::Tensor per_row(const at::Tensor& t, const at::Tensor& logits, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), "bcoder: ", name, " must be [N] = [", logits.size(0),
              "], got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "bcoder: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == logits.device(), "bcoder: ", name, " must be on ", logits.device(), ", got ", t.device());
  return t.contiguous();
}

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, "bcoder::", op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

// inplace_backward only steers the autograd formula in bcoder/ops.py; the kernel ignores it.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bellman_stats_cuda(
    const at::Tensor& logits, const std::optional<at::Tensor>& ckpt_logits_arg, const at::Tensor& actions_arg,
    bool /*inplace_backward*/) {
  check_logits(logits, "logits");
  const at::Tensor actions = per_row(actions_arg, logits, at::kLong, "actions");
  at::Tensor ckpt_logits;
  if (ckpt_logits_arg.has_value()) {
    ckpt_logits = *ckpt_logits_arg;
    TORCH_CHECK(ckpt_logits.sizes() == logits.sizes() && ckpt_logits.scalar_type() == logits.scalar_type() &&
                    ckpt_logits.device() == logits.device(),
                "bcoder: ckpt_logits must match logits in shape, dtype and device");
    check_logits(ckpt_logits, "ckpt_logits");
  }

  const c10::cuda::CUDAGuard device_guard(logits.device());
  const int64_t num_rows = logits.size(0);
  const at::TensorOptions acc_options = logits.options().dtype(acc_dtype(logits));
  at::Tensor max = at::empty({num_rows}, acc_options);
  at::Tensor argmax = at::empty({num_rows}, logits.options().dtype(at::kLong));
  at::Tensor shifted_lse = at::empty({num_rows}, acc_options);
  at::Tensor gathered = at::empty({num_rows}, acc_options);
  at::Tensor target = at::empty({num_rows}, acc_options);
  check_launch(cuda::bellman_stats_forward(
                   logits_dtype(logits), num_rows, logits.size(1), logits.const_data_ptr(), logits.stride(0),
                   ckpt_logits.defined() ? ckpt_logits.const_data_ptr() : nullptr,
                   ckpt_logits.defined() ? ckpt_logits.stride(0) : 0, actions.const_data_ptr<int64_t>(),
                   max.mutable_data_ptr(), argmax.mutable_data_ptr<int64_t>(), shifted_lse.mutable_data_ptr(),
                   gathered.mutable_data_ptr(), target.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
               "bellman_stats");
  return {max, argmax, shifted_lse, gathered, target};
}

// Checks the backward's per-row inputs and writes the gradient of `logits` into `grad`
// (which may be `logits` itself).
void launch_backward(const at::Tensor& logits, const at::Tensor& actions_arg, const at::Tensor& argmax_arg,
                     const at::Tensor& shifted_lse_arg, const at::Tensor& grad_max_arg,
                     const at::Tensor& grad_shifted_lse_arg, const at::Tensor& grad_gathered_arg,
                     const at::Tensor& grad, const char* op) {
  const at::ScalarType acc = acc_dtype(logits);
  const at::Tensor actions = per_row(actions_arg, logits, at::kLong, "actions");
  const at::Tensor argmax = per_row(argmax_arg, logits, at::kLong, "argmax");
  const at::Tensor shifted_lse = per_row(shifted_lse_arg, logits, acc, "shifted_lse");
  const at::Tensor grad_max = per_row(grad_max_arg, logits, acc, "grad_max");
  const at::Tensor grad_shifted_lse = per_row(grad_shifted_lse_arg, logits, acc, "grad_shifted_lse");
  const at::Tensor grad_gathered = per_row(grad_gathered_arg, logits, acc, "grad_gathered");

  const c10::cuda::CUDAGuard device_guard(logits.device());
  check_launch(cuda::bellman_stats_backward(
                   logits_dtype(logits), logits.size(0), logits.size(1), logits.const_data_ptr(), logits.stride(0),
                   actions.const_data_ptr<int64_t>(), argmax.const_data_ptr<int64_t>(),
                   shifted_lse.const_data_ptr(), grad_max.const_data_ptr(), grad_shifted_lse.const_data_ptr(),
                   grad_gathered.const_data_ptr(),
                   grad.mutable_data_ptr(), grad.stride(0), c10::cuda::getCurrentCUDAStream()),
               op);
}

at::Tensor bellman_stats_backward_cuda(const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& argmax,
                                       const at::Tensor& shifted_lse, const at::Tensor& grad_max,
                                       const at::Tensor& grad_shifted_lse, const at::Tensor& grad_gathered) {
  check_logits(logits, "logits");
  at::Tensor grad = at::empty(logits.sizes(), logits.options());  // contiguous, row stride V
  launch_backward(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered, grad,
                  "bellman_stats_backward");
  return grad;
}

void bellman_stats_backward_cuda_(const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& argmax,
                                  const at::Tensor& shifted_lse, const at::Tensor& grad_max,
                                  const at::Tensor& grad_shifted_lse, const at::Tensor& grad_gathered) {
  check_logits(logits, "logits");
  // Rows are written: overlapping (e.g. expanded) rows would be written by several blocks.
  TORCH_CHECK(logits.size(0) <= 1 || logits.stride(0) >= logits.size(1),
              "bcoder::bellman_stats_backward_: logits rows must not overlap, got strides ", logits.strides());
  launch_backward(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered, logits,
                  "bellman_stats_backward_");
}

}  // namespace
}  // namespace bcoder

TORCH_LIBRARY_IMPL(bcoder, CUDA, m) {
  m.impl("bellman_stats", &bcoder::bellman_stats_cuda);
  m.impl("bellman_stats_backward", &bcoder::bellman_stats_backward_cuda);
  m.impl("bellman_stats_backward_", &bcoder::bellman_stats_backward_cuda_);
}
