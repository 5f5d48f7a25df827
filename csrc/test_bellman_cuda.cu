// Native test of the CUDA launchers (bellman_cuda.h) against a float64 host oracle, without torch.
// Exits 77 (ctest SKIP_RETURN_CODE) when no CUDA device is usable, 1 on a mismatch.
//
// Each case fills an [N, V] block at a given row stride and storage offset (so rows start
// misaligned to 16 bytes), with a tie row, an all -inf row, a padding row, a NaN row, a row
// whose first half is -inf, a row holding +inf and a row whose max is its first column (the first
// one an in-place backward overwrites, while the max is still needed), then checks the forward
// statistics, the out-of-place backward, and that the in-place backward writes exactly the same
// bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "bellman_cuda.h"

namespace {

using bcoder::cuda::LogitsDtype;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <typename T> struct Traits;
template <> struct Traits<__half> {
  using Acc = float;
  static constexpr LogitsDtype kDtype = LogitsDtype::kFloat16;
  static constexpr double kRelTol = 2e-3;  // one fp16 rounding of the gradient
  static double to_double(__half x) { return __half2float(x); }
  static __half from_double(double x) { return __float2half_rn(static_cast<float>(x)); }
};
template <> struct Traits<__nv_bfloat16> {
  using Acc = float;
  static constexpr LogitsDtype kDtype = LogitsDtype::kBFloat16;
  static constexpr double kRelTol = 1.6e-2;
  static double to_double(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __nv_bfloat16 from_double(double x) { return __float2bfloat16_rn(static_cast<float>(x)); }
};
template <> struct Traits<float> {
  using Acc = float;
  static constexpr LogitsDtype kDtype = LogitsDtype::kFloat32;
  static constexpr double kRelTol = 1e-5;
  static double to_double(float x) { return x; }
  static float from_double(double x) { return static_cast<float>(x); }
};
template <> struct Traits<double> {
  using Acc = double;
  static constexpr LogitsDtype kDtype = LogitsDtype::kFloat64;
  static constexpr double kRelTol = 1e-12;
  static double to_double(double x) { return x; }
  static double from_double(double x) { return x; }
};

struct Case {
  const char* name;
  int64_t rows;
  int64_t vocab;
  int64_t row_stride;  // elements, >= vocab
  int64_t offset;      // elements before row 0
  bool with_ckpt;
};

int failures = 0;

void expect(bool ok, const char* dtype, const Case& c, const char* what, int64_t row, int64_t col, double got,
            double want) {
  if (ok) return;
  if (++failures <= 20) {
    std::printf("FAIL %s %s: %s row %lld col %lld: got %.17g want %.17g\n", dtype, c.name, what,
                static_cast<long long>(row), static_cast<long long>(col), got, want);
  }
}

bool same(double got, double want) { return got == want || (std::isnan(got) && std::isnan(want)); }

bool close(double got, double want, double rel_tol) {
  if (std::isnan(want) || std::isinf(want)) return same(got, want);
  return std::fabs(got - want) <= rel_tol * (1.0 + std::fabs(want));
}

#define CUDA_OK(call)                                                                          \
  do {                                                                                         \
    const cudaError_t status_ = (call);                                                        \
    if (status_ != cudaSuccess) {                                                              \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(status_), __FILE__, __LINE__); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

template <typename T>
T* to_device(const std::vector<T>& host) {
  T* device = nullptr;
  CUDA_OK(cudaMalloc(&device, host.size() * sizeof(T)));
  CUDA_OK(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return device;
}

template <typename T>
std::vector<T> to_host(const T* device, size_t count) {
  std::vector<T> host(count);
  CUDA_OK(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// Deterministic values in [-4, 4), rounded to T.
template <typename T>
std::vector<T> make_logits(const Case& c, uint32_t seed) {
  using Tr = Traits<T>;
  std::vector<T> block(c.offset + c.rows * c.row_stride, Tr::from_double(0.0));
  uint32_t state = seed;
  for (int64_t i = 0; i < c.rows; ++i) {
    for (int64_t k = 0; k < c.vocab; ++k) {
      state = state * 1664525u + 1013904223u;
      double v = (state >> 8) * (8.0 / 16777216.0) - 4.0;
      if (i == 0 && c.vocab > 7 && (k == 3 || k == 7)) v = 5.0;  // tie: first argmax is 3
      if (i == 1) v = -kInf;                                     // all -inf row
      if (i == 3 && k == c.vocab / 2) v = kNaN;                  // NaN row
      if (i == 4 && k < c.vocab / 2) v = -kInf;                  // -inf head block
      if (i == 5 && k == c.vocab / 3) v = kInf;                  // +inf max: shifted_lse NaN
      if (i == 6 && k == 0) v = 6.0;                             // the max in column 0
      block[c.offset + i * c.row_stride + k] = Tr::from_double(v);
    }
  }
  return block;
}

struct RowOracle {
  double max, shifted_lse, gathered, target;
  int64_t argmax;
};

// First argmax ignoring NaN (the contract leaves argmax of a NaN row unspecified), 0 if none.
int64_t first_argmax(const std::vector<double>& x) {
  int64_t best = 0;
  double best_value = -kInf;
  for (size_t k = 0; k < x.size(); ++k) {
    if (x[k] > best_value) {
      best_value = x[k];
      best = static_cast<int64_t>(k);
    }
  }
  return best;
}

template <typename T>
std::vector<double> row_values(const std::vector<T>& block, const Case& c, int64_t i) {
  std::vector<double> x(c.vocab);
  for (int64_t k = 0; k < c.vocab; ++k) x[k] = Traits<T>::to_double(block[c.offset + i * c.row_stride + k]);
  return x;
}

template <typename T>
void run_case(const char* dtype, const Case& c) {
  using Tr = Traits<T>;
  using Acc = typename Tr::Acc;
  const std::vector<T> logits = make_logits<T>(c, 12345u + static_cast<uint32_t>(c.vocab));
  const std::vector<T> ckpt = make_logits<T>(c, 777u);
  std::vector<int64_t> actions(c.rows);
  for (int64_t i = 0; i < c.rows; ++i) actions[i] = i == 2 ? -1 : (i * 7 + 1) % c.vocab;

  T* d_logits = to_device(logits);
  T* d_ckpt = to_device(ckpt);
  int64_t* d_actions = to_device(actions);
  const std::vector<Acc> zeros(c.rows, Acc(0));
  Acc* d_max = to_device(zeros);
  Acc* d_shifted_lse = to_device(zeros);
  Acc* d_gathered = to_device(zeros);
  Acc* d_target = to_device(zeros);
  int64_t* d_argmax = to_device(std::vector<int64_t>(c.rows, 0));

  CUDA_OK(bcoder::cuda::bellman_stats_forward(Tr::kDtype, c.rows, c.vocab, d_logits + c.offset, c.row_stride,
                                              c.with_ckpt ? d_ckpt + c.offset : nullptr, c.row_stride, d_actions,
                                              d_max, d_argmax, d_shifted_lse, d_gathered, d_target, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<Acc> max = to_host(d_max, c.rows), shifted_lse = to_host(d_shifted_lse, c.rows);
  const std::vector<Acc> gathered = to_host(d_gathered, c.rows), target = to_host(d_target, c.rows);
  const std::vector<int64_t> argmax = to_host(d_argmax, c.rows);

  for (int64_t i = 0; i < c.rows; ++i) {
    const std::vector<double> x = row_values(logits, c, i);
    bool has_nan = false;
    double m = -kInf;
    for (double v : x) {
      has_nan |= std::isnan(v);
      if (v > m) m = v;
    }
    // log sum exp(x - max): -inf for an all -inf row, NaN with a NaN or a +inf max (inf - inf).
    double sum = 0.0;
    for (double v : x) sum += m == -kInf ? 0.0 : std::exp(v - m);
    const double log_sum = has_nan || m == kInf ? kNaN : (m == -kInf ? -kInf : std::log(sum));
    RowOracle want{has_nan ? kNaN : m, log_sum, 0.0, 0.0, first_argmax(x)};
    if (actions[i] < 0) {
      want = {0.0, 0.0, 0.0, 0.0, 0};
    } else {
      want.gathered = x[actions[i]];
      want.target = c.with_ckpt ? x[first_argmax(row_values(ckpt, c, i))] : want.max;
    }
    expect(same(max[i], want.max), dtype, c, "max", i, -1, max[i], want.max);
    expect(close(shifted_lse[i], want.shifted_lse, 64 * std::numeric_limits<Acc>::epsilon()), dtype, c, "shifted_lse",
           i, -1, shifted_lse[i], want.shifted_lse);
    expect(same(gathered[i], want.gathered), dtype, c, "gathered", i, -1, gathered[i], want.gathered);
    if (!has_nan) {
      expect(argmax[i] == want.argmax, dtype, c, "argmax", i, -1, double(argmax[i]), double(want.argmax));
      expect(same(target[i], want.target), dtype, c, "target", i, -1, target[i], want.target);
    }
  }

  // Backward: dense on even rows, sparse-only on odd rows, with the kernel's own argmax and
  // shifted_lse; the oracle reads the max back from the row as the contract says.
  std::vector<Acc> grad_max(c.rows), grad_shifted_lse(c.rows), grad_gathered(c.rows);
  for (int64_t i = 0; i < c.rows; ++i) {
    grad_max[i] = Acc(-0.5 - 0.01 * i);
    grad_shifted_lse[i] = i % 2 == 0 ? Acc(0.75) : Acc(0);
    grad_gathered[i] = Acc(0.25 + 0.01 * i);
  }
  Acc* d_grad_max = to_device(grad_max);
  Acc* d_grad_shifted_lse = to_device(grad_shifted_lse);
  Acc* d_grad_gathered = to_device(grad_gathered);
  T* d_grad = to_device(std::vector<T>(c.rows * c.vocab, Tr::from_double(kNaN)));
  CUDA_OK(bcoder::cuda::bellman_stats_backward(Tr::kDtype, c.rows, c.vocab, d_logits + c.offset, c.row_stride,
                                               d_actions, d_argmax, d_shifted_lse, d_grad_max, d_grad_shifted_lse,
                                               d_grad_gathered, d_grad, c.vocab, nullptr));
  CUDA_OK(bcoder::cuda::bellman_stats_backward(Tr::kDtype, c.rows, c.vocab, d_logits + c.offset, c.row_stride,
                                               d_actions, d_argmax, d_shifted_lse, d_grad_max, d_grad_shifted_lse,
                                               d_grad_gathered, d_logits + c.offset, c.row_stride, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<T> grad = to_host(d_grad, c.rows * c.vocab);
  const std::vector<T> in_place = to_host(d_logits, logits.size());

  for (int64_t i = 0; i < c.rows; ++i) {
    const std::vector<double> x = row_values(logits, c, i);
    for (int64_t k = 0; k < c.vocab; ++k) {
      double want = 0.0;
      if (actions[i] >= 0) {
        const double row_max = x[argmax[i]];
        if (grad_shifted_lse[i] != 0) {
          want = grad_shifted_lse[i] * std::exp((x[k] - row_max) - double(shifted_lse[i]));
        }
        if (k == actions[i]) want += grad_gathered[i];
        if (k == argmax[i]) want += double(grad_max[i]) - double(grad_shifted_lse[i]);
      }
      const double got = Tr::to_double(grad[i * c.vocab + k]);
      expect(close(got, Tr::to_double(Tr::from_double(want)), Tr::kRelTol), dtype, c, "grad", i, k, got, want);
      const T written = in_place[c.offset + i * c.row_stride + k];
      expect(std::memcmp(&written, &grad[i * c.vocab + k], sizeof(T)) == 0, dtype, c, "in-place grad", i, k,
             Tr::to_double(written), got);
    }
  }
  for (void* p : {static_cast<void*>(d_logits), static_cast<void*>(d_ckpt), static_cast<void*>(d_actions),
                  static_cast<void*>(d_max), static_cast<void*>(d_shifted_lse), static_cast<void*>(d_gathered),
                  static_cast<void*>(d_target), static_cast<void*>(d_argmax), static_cast<void*>(d_grad_max),
                  static_cast<void*>(d_grad_shifted_lse), static_cast<void*>(d_grad_gathered),
                  static_cast<void*>(d_grad)}) {
    CUDA_OK(cudaFree(p));
  }
}

template <typename T>
void run_all(const char* dtype) {
  const Case cases[] = {
      {"one row", 1, 37, 37, 0, false},
      {"odd vocab, odd stride, offset 1", 9, 1001, 1003, 1, true},
      {"aligned, large vocab", 6, 50000, 50000, 0, true},
      {"vocab below one vector", 7, 3, 5, 3, true},
      {"misaligned rows, multi-batch", 8, 9000, 9005, 2, false},
  };
  for (const Case& c : cases) run_case<T>(dtype, c);
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no usable CUDA device: skipping\n");
    return 77;
  }
  run_all<float>("float32");
  run_all<double>("float64");
  run_all<__half>("float16");
  run_all<__nv_bfloat16>("bfloat16");
  if (failures > 0) {
    std::printf("%d mismatches\n", failures);
    return 1;
  }
  std::printf("all CUDA Bellman checks passed\n");
  return 0;
}
