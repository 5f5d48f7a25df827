// CPU kernels of the fused Bellman-loss op: vectorised with at::vec, parallel over rows.
//
// Each row is streamed in L1-sized chunks. Per chunk: its max (vectorised), and only when the
// max rises, a scan for its first index and a rescale of the running sum; then the sum of
// exp(x - running max) over the chunk while it is still in cache. So the forward reads each
// element of both logits tensors once from memory, and bf16/fp16 accumulate in fp32.
#include "bellman.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <sys/mman.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

namespace bcoder {
namespace {

using at::vec::Vectorized;

constexpr int64_t kChunk = 2048;  // elements of a row processed while they sit in L1

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// exp_u20: ATen's own fast exp for fp32 (the one its softmax uses); fp64 keeps full precision.
inline Vectorized<float> vec_exp(const Vectorized<float>& x) { return x.exp_u20(); }
inline Vectorized<double> vec_exp(const Vectorized<double>& x) { return x.exp(); }

// Returns x[0:n) as acc_t: the input itself when no conversion is needed, else `buf`.
template <typename scalar_t, typename acc_t>
const acc_t* load_chunk(const scalar_t* x, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return x;
  } else {
    using Vec = Vectorized<scalar_t>;
    int64_t k = 0;
    for (; k + Vec::size() <= n; k += Vec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(Vec::loadu(x + k));
      lo.store(buf + k);
      hi.store(buf + k + Vectorized<float>::size());
    }
    for (; k < n; ++k) buf[k] = static_cast<acc_t>(x[k]);
    return buf;
  }
}

// Writes acc_t values to the output dtype.
template <typename scalar_t, typename acc_t>
void store_chunk(const acc_t* src, int64_t n, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memmove(out, src, n * sizeof(acc_t));
  } else {
    using Vec = Vectorized<scalar_t>;
    constexpr int64_t half = Vectorized<float>::size();
    int64_t k = 0;
    for (; k + Vec::size() <= n; k += Vec::size()) {
      at::vec::convert_from_float<scalar_t>(Vectorized<float>::loadu(src + k),
                                            Vectorized<float>::loadu(src + k + half))
          .store(out + k);
    }
    for (; k < n; ++k) out[k] = static_cast<scalar_t>(src[k]);
  }
}

// Max of x[0:n); NaN if any element is NaN.
template <typename acc_t>
acc_t chunk_max(const acc_t* x, int64_t n) {
  using Vec = Vectorized<acc_t>;
  acc_t best = kNegInf<acc_t>;
  int64_t k = 0;
  if (n >= 2 * Vec::size()) {
    Vec m0 = Vec::loadu(x), m1 = Vec::loadu(x + Vec::size());
    for (k = 2 * Vec::size(); k + 2 * Vec::size() <= n; k += 2 * Vec::size()) {
      m0 = at::vec::maximum(m0, Vec::loadu(x + k));
      m1 = at::vec::maximum(m1, Vec::loadu(x + k + Vec::size()));
    }
    best = at::vec::vec_reduce_all<acc_t>(
        [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, at::vec::maximum(m0, m1));
  }
  for (; k < n; ++k) {
    if (x[k] > best || std::isnan(x[k])) best = x[k];
  }
  return best;
}

// First index of `value` in x[0:n), which holds it.
template <typename acc_t>
int64_t first_index_of(const acc_t* x, int64_t n, acc_t value) {
  int64_t k = 0;
  while (k < n - 1 && x[k] != value) ++k;
  return k;
}

// sum_k exp(x[k] - shift) over x[0:n).
template <typename acc_t>
acc_t chunk_sum_exp(const acc_t* x, int64_t n, acc_t shift) {
  using Vec = Vectorized<acc_t>;
  const Vec vshift(shift);
  Vec s0(0), s1(0);
  int64_t k = 0;
  for (; k + 2 * Vec::size() <= n; k += 2 * Vec::size()) {
    s0 += vec_exp(Vec::loadu(x + k) - vshift);
    s1 += vec_exp(Vec::loadu(x + k + Vec::size()) - vshift);
  }
  acc_t sum = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, s0 + s1);
  for (; k < n; ++k) sum += std::exp(x[k] - shift);
  return sum;
}

// Running first-argmax of a row, fed chunk by chunk.
template <typename acc_t>
struct RunningArgmax {
  acc_t max = kNegInf<acc_t>;
  int64_t index = 0;
  bool saw_nan = false;

  // Folds in chunk x[0:n) starting at column `offset`; returns true when the max rose.
  bool update(const acc_t* x, int64_t n, int64_t offset) {
    const acc_t m = chunk_max(x, n);
    if (std::isnan(m)) {
      saw_nan = true;
      return false;
    }
    if (!(m > max)) return false;
    max = m;
    index = offset + first_index_of(x, n, m);
    return true;
  }
};

template <typename scalar_t>
void stats_kernel(const at::Tensor& logits, const at::Tensor* ckpt, const at::Tensor& actions,
                  at::Tensor& max_out, at::Tensor& argmax_out, at::Tensor& shifted_lse_out,
                  at::Tensor& gathered_out, at::Tensor& target_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const scalar_t* x_base = logits.const_data_ptr<scalar_t>();
  const int64_t x_stride = logits.stride(0);
  const scalar_t* c_base = ckpt ? ckpt->const_data_ptr<scalar_t>() : nullptr;
  const int64_t c_stride = ckpt ? ckpt->stride(0) : 0;
  const int64_t* act = actions.const_data_ptr<int64_t>();
  acc_t* max_p = max_out.data_ptr<acc_t>();
  int64_t* argmax_p = argmax_out.data_ptr<int64_t>();
  acc_t* shifted_lse_p = shifted_lse_out.data_ptr<acc_t>();
  acc_t* gathered_p = gathered_out.data_ptr<acc_t>();
  acc_t* target_p = target_out.data_ptr<acc_t>();

  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t x_buf[kChunk];
    alignas(64) acc_t c_buf[kChunk];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t a = act[i];
      if (a < 0) {
        max_p[i] = shifted_lse_p[i] = gathered_p[i] = target_p[i] = acc_t(0);
        argmax_p[i] = 0;
        continue;
      }
      const scalar_t* x_row = x_base + i * x_stride;
      const scalar_t* c_row = c_base ? c_base + i * c_stride : nullptr;
      RunningArgmax<acc_t> row, ckpt_row;
      acc_t sum = 0;
      for (int64_t offset = 0; offset < vocab; offset += kChunk) {
        const int64_t n = std::min(kChunk, vocab - offset);
        const acc_t* x = load_chunk(x_row + offset, n, x_buf);
        const acc_t previous_max = row.max;
        if (row.update(x, n, offset)) sum *= std::exp(previous_max - row.max);
        // While the max is -inf every element so far is -inf and adds nothing.
        if (row.max != kNegInf<acc_t>) sum += chunk_sum_exp(x, n, row.max);
        if (c_row) ckpt_row.update(load_chunk(c_row + offset, n, c_buf), n, offset);
      }
      const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
      // NaN input makes max and shifted_lse NaN; so does a +inf max (inf - inf), for shifted_lse
      // only (checked here: the vectorised exp maps NaN to inf).
      const bool saw_nan = row.saw_nan || std::isnan(sum) || row.max == std::numeric_limits<acc_t>::infinity();
      max_p[i] = row.saw_nan ? nan : row.max;
      argmax_p[i] = row.index;
      shifted_lse_p[i] = saw_nan ? nan : (row.max == kNegInf<acc_t> ? row.max : std::log(sum));
      gathered_p[i] = static_cast<acc_t>(x_row[a]);
      target_p[i] = c_row ? static_cast<acc_t>(x_row[ckpt_row.index]) : max_p[i];
    }
  });
}

// Writes the gradient of row statistics into `grad` (which may alias `logits`).
template <typename scalar_t>
void backward_kernel(const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& argmax,
                     const at::Tensor& shifted_lse, const at::Tensor& grad_max, const at::Tensor& grad_shifted_lse,
                     const at::Tensor& grad_gathered, const at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const scalar_t* x_base = logits.const_data_ptr<scalar_t>();
  const int64_t x_stride = logits.stride(0);
  scalar_t* g_base = grad.data_ptr<scalar_t>();
  const int64_t g_stride = grad.stride(0);
  const int64_t* act = actions.const_data_ptr<int64_t>();
  const int64_t* argmax_p = argmax.const_data_ptr<int64_t>();
  const acc_t* shifted_lse_p = shifted_lse.const_data_ptr<acc_t>();
  const acc_t* gmax_p = grad_max.const_data_ptr<acc_t>();
  const acc_t* gshifted_lse_p = grad_shifted_lse.const_data_ptr<acc_t>();
  const acc_t* ggath_p = grad_gathered.const_data_ptr<acc_t>();

  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t x_buf[kChunk];
    alignas(64) acc_t g_buf[kChunk];
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* x_row = x_base + i * x_stride;
      scalar_t* g_row = g_base + i * g_stride;
      const int64_t a = act[i];
      if (a < 0) {
        std::memset(static_cast<void*>(g_row), 0, vocab * sizeof(scalar_t));
        continue;
      }
      const int64_t j = argmax_p[i];
      const acc_t weight = gshifted_lse_p[i];
      // Read the two sparse columns before an in-place pass overwrites them; x_j is the max.
      const acc_t x_a = static_cast<acc_t>(x_row[a]), x_j = static_cast<acc_t>(x_row[j]);
      const acc_t shifted_lse = shifted_lse_p[i];
      // softmax = exp((x - max) - shifted_lse): subtracting the max first keeps it exact at any offset.
      const auto softmax = [&](acc_t x) { return std::exp((x - x_j) - shifted_lse); };
      if (weight == acc_t(0)) {
        std::memset(static_cast<void*>(g_row), 0, vocab * sizeof(scalar_t));
      } else {
        const Vec vweight(weight), vmax(x_j), vshifted_lse(shifted_lse);
        for (int64_t offset = 0; offset < vocab; offset += kChunk) {
          const int64_t n = std::min(kChunk, vocab - offset);
          const acc_t* x = load_chunk(x_row + offset, n, x_buf);
          int64_t k = 0;
          for (; k + Vec::size() <= n; k += Vec::size()) {
            (vweight * vec_exp(Vec::loadu(x + k) - vmax - vshifted_lse)).store(g_buf + k);
          }
          for (; k < n; ++k) g_buf[k] = weight * softmax(x[k]);
          store_chunk(g_buf, n, g_row + offset);
        }
      }
      // The sparse columns, summed in acc precision and cast once; d shifted_lse / dx_j = -1.
      const auto dense = [&](acc_t x) { return weight == acc_t(0) ? acc_t(0) : weight * softmax(x); };
      acc_t at_a = dense(x_a) + ggath_p[i];
      if (j == a) {
        g_row[a] = static_cast<scalar_t>(at_a + gmax_p[i] - weight);
      } else {
        g_row[a] = static_cast<scalar_t>(at_a);
        g_row[j] = static_cast<scalar_t>(dense(x_j) + gmax_p[i] - weight);
      }
    }
  });
}

// A fresh gradient buffer backed by transparent huge pages where it is large. The gradient is
// as big as the logits, and first-touch page faults on 4 KiB pages cost more than writing it
// (measured: 100 ms for 0.5 GB here); 2 MiB pages cut that fault count 512-fold. This is what
// c10's THP_MEM_ALLOC_ENABLE does for every allocation, applied to this one.
at::Tensor empty_gradient(const at::Tensor& logits) {
  constexpr size_t kHugePage = size_t(2) << 20;
  const size_t bytes = logits.numel() * logits.element_size();
  if (bytes < 16 * kHugePage) return at::empty(logits.sizes(), logits.options());
  const size_t padded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* data = std::aligned_alloc(kHugePage, padded);
  TORCH_CHECK(data != nullptr, "bellman_stats_backward: out of memory allocating ", padded, " bytes");
  madvise(data, padded, MADV_HUGEPAGE);  // advisory: without THP the buffer is ordinary memory
  return at::from_blob(data, logits.sizes(), [](void* p) { std::free(p); }, logits.options());
}

void check_rows(const at::Tensor& t, const char* name, int64_t rows, int64_t vocab) {
  TORCH_CHECK(t.device().is_cpu(), "bellman_stats: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == vocab, "bellman_stats: ", name,
              " must have shape [", rows, ", ", vocab, "], got ", t.sizes());
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble,
              "bellman_stats: ", name, " must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(vocab == 0 || t.stride(1) == 1, "bellman_stats: ", name, " must be contiguous in its last dim");
}

// An [N] per-row argument, returned contiguous (a strided one is copied), as every backend takes it.
at::Tensor per_row(const at::Tensor& t, const char* name, int64_t rows, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.size(0) == rows && t.scalar_type() == dtype,
              "bellman_stats: ", name, " must be a CPU tensor of shape [", rows, "] and dtype ", dtype,
              ", got ", t.sizes(), " ", t.scalar_type(), " on ", t.device());
  return t.contiguous();
}

void check_actions(const at::Tensor& actions, int64_t vocab) {
  const int64_t* a = actions.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < actions.numel(); ++i) {
    TORCH_CHECK(a[i] < vocab, "bellman_stats: actions[", i, "] = ", a[i], " is not below the vocabulary size ", vocab);
  }
}

at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The backward's [N] arguments, checked and contiguous.
struct BackwardArgs {
  at::Tensor actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered;
};

BackwardArgs check_backward_args(const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& argmax,
                                 const at::Tensor& shifted_lse, const at::Tensor& grad_max,
                                 const at::Tensor& grad_shifted_lse, const at::Tensor& grad_gathered) {
  TORCH_CHECK(logits.dim() == 2, "bellman_stats_backward: logits must be [N, V], got ", logits.sizes());
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  check_rows(logits, "logits", rows, vocab);
  const auto acc = acc_type(logits);
  BackwardArgs args{per_row(actions, "actions", rows, at::kLong),
                    per_row(argmax, "argmax", rows, at::kLong),
                    per_row(shifted_lse, "shifted_lse", rows, acc),
                    per_row(grad_max, "grad_max", rows, acc),
                    per_row(grad_shifted_lse, "grad_shifted_lse", rows, acc),
                    per_row(grad_gathered, "grad_gathered", rows, acc)};
  check_actions(args.actions, vocab);
  return args;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bellman_stats_cpu(
    const at::Tensor& logits, const std::optional<at::Tensor>& ckpt_logits, const at::Tensor& actions_arg,
    bool /*inplace_backward*/) {
  TORCH_CHECK(logits.dim() == 2, "bellman_stats: logits must be [N, V], got ", logits.sizes());
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(vocab > 0, "bellman_stats: the vocabulary is empty");
  check_rows(logits, "logits", rows, vocab);
  if (ckpt_logits) {
    check_rows(*ckpt_logits, "ckpt_logits", rows, vocab);
    TORCH_CHECK(ckpt_logits->scalar_type() == logits.scalar_type(), "bellman_stats: ckpt_logits dtype ",
                ckpt_logits->scalar_type(), " differs from logits dtype ", logits.scalar_type());
  }
  const at::Tensor actions = per_row(actions_arg, "actions", rows, at::kLong);
  check_actions(actions, vocab);
  const auto stat_options = logits.options().dtype(acc_type(logits));
  at::Tensor max_out = at::empty({rows}, stat_options), shifted_lse_out = at::empty({rows}, stat_options);
  at::Tensor gathered_out = at::empty({rows}, stat_options), target_out = at::empty({rows}, stat_options);
  at::Tensor argmax_out = at::empty({rows}, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "bellman_stats_cpu", [&] {
    stats_kernel<scalar_t>(logits, ckpt_logits ? &*ckpt_logits : nullptr, actions, max_out, argmax_out, shifted_lse_out,
                           gathered_out, target_out);
  });
  return {max_out, argmax_out, shifted_lse_out, gathered_out, target_out};
}

at::Tensor bellman_stats_backward_cpu(const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& argmax,
                                      const at::Tensor& shifted_lse, const at::Tensor& grad_max, const at::Tensor& grad_shifted_lse,
                                      const at::Tensor& grad_gathered) {
  const BackwardArgs args =
      check_backward_args(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered);
  at::Tensor grad = empty_gradient(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "bellman_stats_backward_cpu", [&] {
    backward_kernel<scalar_t>(logits, args.actions, args.argmax, args.shifted_lse, args.grad_max,
                              args.grad_shifted_lse, args.grad_gathered, grad);
  });
  return grad;
}

void bellman_stats_backward_cpu_(const at::Tensor& logits, const at::Tensor& actions, const at::Tensor& argmax,
                                 const at::Tensor& shifted_lse, const at::Tensor& grad_max, const at::Tensor& grad_shifted_lse,
                                 const at::Tensor& grad_gathered) {
  const BackwardArgs args =
      check_backward_args(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "bellman_stats_backward_cpu_", [&] {
    backward_kernel<scalar_t>(logits, args.actions, args.argmax, args.shifted_lse, args.grad_max,
                              args.grad_shifted_lse, args.grad_gathered, logits);
  });
}

}  // namespace bcoder
