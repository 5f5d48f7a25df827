// CUDA kernels of the fused Bellman-loss op; the contract is in bellman_cuda.h.
//
// One thread block per row. A row is streamed once as [head | body | tail]: the body is 16-byte
// vectors (8 x fp16/bf16, 4 x fp32, 2 x fp64) starting at the first 16-byte boundary of the row,
// the head and tail (< one vector each) are scalar, so any row stride or storage offset works and
// every row still gets vector loads. Each thread sees its columns in increasing order, which
// makes "first maximum" a strict `>` inside a thread and "lowest column on ties" across threads.
//
// The shifted logsumexp log sum exp(x - max) is computed online: a thread keeps its running max m
// and s = sum exp(x - m); a chunk of values raises m to m' and rescales s by exp(m - m') once,
// then adds exp(x - m') per value. Two partial states merge as m = max(m1, m2),
// s = s1 exp(m1 - m) + s2 exp(m2 - m). At the end the result is log s itself, with no max added
// back, so the cross-entropy built from it keeps full precision at any logit offset. While m is
// -inf nothing finite was seen and s stays 0, so -inf rows or blocks never form -inf - -inf.
// NaN never wins a `>` comparison: it is tracked by a flag and forces max and shifted_lse to NaN.
#include "bellman_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include <climits>
#include <cstdint>
#include <cstring>

namespace bcoder {
namespace cuda {
namespace {

constexpr int kVectorBytes = 16;
constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 512;
constexpr int kMaxWarps = kMaxThreads / kWarpSize;
constexpr unsigned kFullWarp = 0xffffffffu;
// The column of an ArgMax that has seen nothing above -inf; loses every tie, reported as 0.
constexpr int kNoColumn = INT_MAX;

// Accumulation type: fp16/bf16/fp32 logits accumulate in fp32, fp64 logits in fp64.
template <typename T> struct AccumulateAs { using type = float; };
template <> struct AccumulateAs<double> { using type = double; };
template <typename T> using acc_t = typename AccumulateAs<T>::type;

__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

template <typename T> __device__ T from_acc(acc_t<T> x);
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }

// Full-precision exp/log (not the __expf intrinsic): the kernels are memory-bound, and the
// gradient's softmax must match the float64 oracle to fp32 rounding.
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

template <typename A> __device__ __forceinline__ A nan_value();
template <> __device__ __forceinline__ float nan_value<float>() { return CUDART_NAN_F; }
template <> __device__ __forceinline__ double nan_value<double>() { return CUDART_NAN; }
template <typename A> __device__ __forceinline__ A pos_inf();
template <> __device__ __forceinline__ float pos_inf<float>() { return CUDART_INF_F; }
template <> __device__ __forceinline__ double pos_inf<double>() { return CUDART_INF; }
template <typename A> __device__ __forceinline__ A neg_inf() { return -pos_inf<A>(); }

// 16 bytes of consecutive elements, moved as one 128-bit load or store.
template <typename T>
struct alignas(kVectorBytes) Vector {
  static constexpr int kSize = kVectorBytes / sizeof(T);
  T elems[kSize];
};

// Forward only: logits are read-only for the whole kernel, so the non-coherent path is legal.
template <typename T>
__device__ __forceinline__ Vector<T> load_read_only(const Vector<T>* p) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  Vector<T> v;
  memcpy(&v, &raw, sizeof(v));
  return v;
}

// Backward: logits may alias the gradient (in place), so these use ordinary coherent accesses.
template <typename T>
__device__ __forceinline__ Vector<T> load_vector(const Vector<T>* p) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  Vector<T> v;
  memcpy(&v, &raw, sizeof(v));
  return v;
}

template <typename T>
__device__ __forceinline__ void store_vector(Vector<T>* p, const Vector<T>& v) {
  uint4 raw;
  memcpy(&raw, &v, sizeof(v));
  *reinterpret_cast<uint4*>(p) = raw;
}

template <typename T>
__device__ __forceinline__ int misalignment_in_elements(const T* p) {
  return static_cast<int>(reinterpret_cast<uintptr_t>(p) % kVectorBytes) / static_cast<int>(sizeof(T));
}

// Columns [0, head) are scalar, [head, tail_start) are num_vectors aligned vectors, and
// [tail_start, V) are scalar again; head and V - tail_start are both below Vector<T>::kSize.
struct RowSplit {
  int head;
  int num_vectors;
  int tail_start;
};

template <typename T>
__device__ __forceinline__ RowSplit split_row(const T* row, int vocab) {
  constexpr int kVec = Vector<T>::kSize;
  const int head = min((kVec - misalignment_in_elements(row)) % kVec, vocab);
  const int num_vectors = (vocab - head) / kVec;
  return {head, num_vectors, head + num_vectors * kVec};
}

// Running first argmax of the values one thread (or, after merging, a block) has seen.
template <typename A>
struct ArgMax {
  A value;  // never NaN: NaN > value is false
  int column;

  __device__ static ArgMax identity() { return {neg_inf<A>(), kNoColumn}; }

  // Values must arrive in increasing column order, so a strict > keeps the first maximum.
  __device__ void absorb(A x, int col) {
    if (x > value) {
      value = x;
      column = col;
    }
  }

  template <int K>
  __device__ void absorb(const A (&x)[K], int first_col) {
#pragma unroll
    for (int k = 0; k < K; ++k) absorb(x[k], first_col + k);
  }

  // Symmetric: the larger value wins, the lower column breaks a tie.
  __device__ void merge(const ArgMax& other) {
    if (other.value > value || (other.value == value && other.column < column)) *this = other;
  }

  __device__ ArgMax shfl_xor(int lane_mask) const {
    return {__shfl_xor_sync(kFullWarp, value, lane_mask), __shfl_xor_sync(kFullWarp, column, lane_mask)};
  }

  __device__ int column_or_zero() const { return column == kNoColumn ? 0 : column; }
};

// Online max / argmax / shifted logsumexp / NaN state of a part of one row.
template <typename A>
struct RowStats {
  ArgMax<A> best;
  A scaled_sum;  // sum of exp(x - best.value) over the values seen; 0 while best.value == -inf
  bool saw_nan;

  __device__ static RowStats identity() { return {ArgMax<A>::identity(), A(0), false}; }

  // K consecutive values starting at column first_col: one rescale, K exps.
  template <int K>
  __device__ void absorb(const A (&x)[K], int first_col) {
    const A previous_max = best.value;
    best.absorb(x, first_col);
#pragma unroll
    for (int k = 0; k < K; ++k) saw_nan |= isnan(x[k]);
    if (best.value == neg_inf<A>()) return;
    if (best.value > previous_max) scaled_sum *= exp_acc(previous_max - best.value);
#pragma unroll
    for (int k = 0; k < K; ++k) scaled_sum += exp_acc(x[k] - best.value);
  }

  __device__ void merge(const RowStats& other) {
    const A joint_max = best.value > other.best.value ? best.value : other.best.value;
    if (joint_max != neg_inf<A>()) {
      scaled_sum = scaled_sum * exp_acc(best.value - joint_max) +
                   other.scaled_sum * exp_acc(other.best.value - joint_max);
    }
    best.merge(other.best);
    saw_nan |= other.saw_nan;
  }

  __device__ RowStats shfl_xor(int lane_mask) const {
    return {best.shfl_xor(lane_mask), __shfl_xor_sync(kFullWarp, scaled_sum, lane_mask),
            __shfl_xor_sync(kFullWarp, static_cast<int>(saw_nan), lane_mask) != 0};
  }

  __device__ A max() const { return saw_nan ? nan_value<A>() : best.value; }

  // shifted_lse = log s, s >= 1 once m is finite; -inf for an all -inf row. A +inf max gives
  // NaN, as the reference's inf - inf does (the sum held exp(inf - inf) = NaN anyway).
  __device__ A shifted_lse() const {
    if (saw_nan || best.value == pos_inf<A>()) return nan_value<A>();
    return best.value == neg_inf<A>() ? best.value : log_acc(scaled_sum);
  }
};

template <typename State>
__device__ __forceinline__ State warp_reduce(State state) {
#pragma unroll
  for (int lane_mask = kWarpSize / 2; lane_mask > 0; lane_mask /= 2) state.merge(state.shfl_xor(lane_mask));
  return state;
}

// Merges every thread's state; the result is valid in warp 0 (thread 0 writes it). blockDim.x
// must be a multiple of 32 and every thread must call this (it holds a barrier).
template <typename State>
__device__ __forceinline__ State block_reduce(State state, State (&per_warp)[kMaxWarps]) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  state = warp_reduce(state);
  if (lane == 0) per_warp[warp] = state;
  __syncthreads();
  if (warp == 0) {
    state = lane < static_cast<int>(blockDim.x / kWarpSize) ? per_warp[lane] : State::identity();
    state = warp_reduce(state);
  }
  return state;
}

// Runs consume(load(i), i) for the body vectors i = threadIdx.x + j * blockDim.x in increasing
// order. Loads are issued kLoadsInFlight at a time before any is consumed: the compiler may not
// hoist a load above the previous iteration's stores (in place they could alias), and a few
// 16-byte loads in flight per thread are what keep HBM busy at moderate occupancy.
template <typename Load, typename Consume>
__device__ __forceinline__ void for_each_body_vector(int num_vectors, Load&& load, Consume&& consume) {
  constexpr int kLoadsInFlight = 4;
  const int stride = blockDim.x;
  int i = threadIdx.x;
  for (; i + (kLoadsInFlight - 1) * stride < num_vectors; i += kLoadsInFlight * stride) {
    decltype(load(i)) batch[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) batch[u] = load(i + u * stride);
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) consume(batch[u], i + u * stride);
  }
  for (; i < num_vectors; i += stride) consume(load(i), i);
}

// Calls visit(values, first_col) on every column of the row exactly once, in chunks of one
// (head, tail) or Vector<T>::kSize (body) consecutive values converted to acc_t<T>.
template <typename T, typename Visit>
__device__ __forceinline__ void stream_row(const T* __restrict__ row, int vocab, Visit&& visit) {
  using A = acc_t<T>;
  constexpr int kVec = Vector<T>::kSize;
  const RowSplit split = split_row(row, vocab);
  const int t = threadIdx.x;
  if (t < split.head) {
    const A value[1] = {to_acc(row[t])};
    visit(value, t);
  }
  const Vector<T>* body = reinterpret_cast<const Vector<T>*>(row + split.head);
  for_each_body_vector(
      split.num_vectors, [&](int i) { return load_read_only(body + i); },
      [&](const Vector<T>& packed, int i) {
        A values[kVec];
#pragma unroll
        for (int k = 0; k < kVec; ++k) values[k] = to_acc(packed.elems[k]);
        visit(values, split.head + i * kVec);
      });
  if (split.tail_start + t < vocab) {
    const A value[1] = {to_acc(row[split.tail_start + t])};
    visit(value, split.tail_start + t);
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) bellman_stats_forward_kernel(
    int vocab, const T* __restrict__ logits, int64_t logits_row_stride, const T* __restrict__ ckpt_logits,
    int64_t ckpt_row_stride, const int64_t* __restrict__ actions, acc_t<T>* __restrict__ max_out,
    int64_t* __restrict__ argmax_out, acc_t<T>* __restrict__ shifted_lse_out, acc_t<T>* __restrict__ gathered_out,
    acc_t<T>* __restrict__ target_out) {
  using A = acc_t<T>;
  __shared__ RowStats<A> stats_per_warp[kMaxWarps];
  __shared__ ArgMax<A> ckpt_per_warp[kMaxWarps];

  const int64_t row = blockIdx.x;
  const int64_t action = actions[row];
  if (action < 0) {  // padding; the whole block leaves before any barrier
    if (threadIdx.x == 0) {
      max_out[row] = shifted_lse_out[row] = gathered_out[row] = target_out[row] = A(0);
      argmax_out[row] = 0;
    }
    return;
  }
  const T* x = logits + row * logits_row_stride;
  // Issued before the stream so its latency hides behind it; an action >= V reads nothing.
  const A gathered = threadIdx.x == 0 && action < vocab ? to_acc(x[action]) : nan_value<A>();

  RowStats<A> stats = RowStats<A>::identity();
  stream_row(x, vocab, [&](const auto& values, int first_col) { stats.absorb(values, first_col); });
  stats = block_reduce(stats, stats_per_warp);

  // Without a checkpoint the target column is the row's own argmax, so target = max.
  A target = stats.max();
  if (ckpt_logits != nullptr) {  // uniform over the grid, so the barrier inside is safe
    ArgMax<A> ckpt_best = ArgMax<A>::identity();
    stream_row(ckpt_logits + row * ckpt_row_stride, vocab,
               [&](const auto& values, int first_col) { ckpt_best.absorb(values, first_col); });
    ckpt_best = block_reduce(ckpt_best, ckpt_per_warp);
    if (threadIdx.x == 0) target = to_acc(x[ckpt_best.column_or_zero()]);
  }

  if (threadIdx.x == 0) {
    max_out[row] = stats.max();
    argmax_out[row] = stats.best.column_or_zero();
    shifted_lse_out[row] = stats.shifted_lse();
    gathered_out[row] = gathered;
    target_out[row] = target;
  }
}

// Per-row gradient coefficients; see bellman_stats_backward in bellman_cuda.h.
template <typename A>
struct GradientRow {
  A grad_shifted_lse;
  A row_max;      // x[argmax], read back from the row (dense rows only)
  A shifted_lse;  // dense rows only
  A grad_gathered;
  int64_t action;
  A grad_max;
  int64_t argmax;

  // softmax = exp((x - max) - shifted_lse): the max goes first, so the difference is exact at
  // any logit offset. The sparse terms are added in acc precision before the single cast, in the
  // oracle's order; d shifted_lse / dx = softmax - e_argmax puts -grad_shifted_lse at the argmax.
  template <bool kDense>
  __device__ __forceinline__ A at(A x, int col) const {
    A g = kDense ? grad_shifted_lse * exp_acc((x - row_max) - shifted_lse) : A(0);
    if (col == action) g += grad_gathered;
    if (col == argmax) g += grad_max - grad_shifted_lse;
    return g;
  }
};

// How a row's logits are read when writing its gradient.
enum class LogitsRead {
  kNone,     // grad_shifted_lse == 0 (or padding): only the sparse columns are non-zero
  kVector,   // logits and grad rows share their 16-byte misalignment
  kScalar,   // they do not: vector stores, element-wise loads
};

template <LogitsRead kRead, typename T>
__device__ __forceinline__ void write_gradient_row(const T* x, T* out, int vocab, const GradientRow<acc_t<T>>& row) {
  using A = acc_t<T>;
  constexpr int kVec = Vector<T>::kSize;
  constexpr bool kDense = kRead != LogitsRead::kNone;
  const RowSplit split = split_row(out, vocab);  // aligned to the output: every store is a vector
  const int t = threadIdx.x;
  if (t < split.head) out[t] = from_acc<T>(row.template at<kDense>(kDense ? to_acc(x[t]) : A(0), t));
  const Vector<T>* body = reinterpret_cast<const Vector<T>*>(x + split.head);
  for_each_body_vector(
      split.num_vectors,
      [&](int i) {
        Vector<T> packed = {};
        if (kRead == LogitsRead::kVector) {
          packed = load_vector(body + i);
        } else if (kRead == LogitsRead::kScalar) {
#pragma unroll
          for (int k = 0; k < kVec; ++k) packed.elems[k] = x[split.head + i * kVec + k];
        }
        return packed;
      },
      [&](const Vector<T>& packed, int i) {
        const int first_col = split.head + i * kVec;
        Vector<T> grad;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          grad.elems[k] = from_acc<T>(row.template at<kDense>(to_acc(packed.elems[k]), first_col + k));
        }
        store_vector(reinterpret_cast<Vector<T>*>(out + split.head) + i, grad);
      });
  const int col = split.tail_start + t;
  if (col < vocab) out[col] = from_acc<T>(row.template at<kDense>(kDense ? to_acc(x[col]) : A(0), col));
}

// No __restrict__ on logits/grad: the in-place variant passes the same row for both.
template <typename T>
__global__ void __launch_bounds__(kMaxThreads) bellman_stats_backward_kernel(
    int vocab, const T* logits, int64_t logits_row_stride, const int64_t* __restrict__ actions,
    const int64_t* __restrict__ argmax, const acc_t<T>* __restrict__ shifted_lse,
    const acc_t<T>* __restrict__ grad_max, const acc_t<T>* __restrict__ grad_shifted_lse,
    const acc_t<T>* __restrict__ grad_gathered, T* grad, int64_t grad_row_stride) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * logits_row_stride;
  T* out = grad + row * grad_row_stride;
  const int64_t action = actions[row];
  // A padding row gets all-zero coefficients (and column -1 for both sparse terms): zeros.
  GradientRow<A> coefficients = {A(0), A(0), A(0), A(0), -1, A(0), -1};
  if (action >= 0) {
    coefficients = {grad_shifted_lse[row], A(0), A(0), grad_gathered[row], action, grad_max[row], argmax[row]};
  }
  if (coefficients.grad_shifted_lse != A(0)) {  // the same for every thread of the block
    coefficients.row_max = to_acc(x[coefficients.argmax]);
    coefficients.shifted_lse = shifted_lse[row];
    // In place, the thread owning the argmax column overwrites it: every thread reads the max
    // before any thread writes.
    __syncthreads();
  }
  if (coefficients.grad_shifted_lse == A(0)) {
    write_gradient_row<LogitsRead::kNone>(x, out, vocab, coefficients);
  } else if (misalignment_in_elements(x) == misalignment_in_elements(out)) {
    write_gradient_row<LogitsRead::kVector>(x, out, vocab, coefficients);
  } else {
    write_gradient_row<LogitsRead::kScalar>(x, out, vocab, coefficients);
  }
}

// Whole warps, about one 16-byte vector per thread for short rows, at most kMaxThreads.
int threads_for_row(int64_t vocab, int vector_size) {
  const int64_t vectors = (vocab + vector_size - 1) / vector_size;
  const int64_t capped = vectors < kMaxThreads ? vectors : kMaxThreads;
  const int64_t warps = (capped + kWarpSize - 1) / kWarpSize;
  return static_cast<int>(warps > 0 ? warps : 1) * kWarpSize;
}

// One block per row (gridDim.x < 2^31) and int column indices.
bool launchable(int64_t num_rows, int64_t vocab) {
  return num_rows > 0 && num_rows <= INT_MAX && vocab > 0 && vocab <= INT_MAX;
}

template <typename T>
cudaError_t launch_forward(int64_t num_rows, int64_t vocab, const void* logits, int64_t logits_row_stride,
                           const void* ckpt_logits, int64_t ckpt_row_stride, const int64_t* actions, void* max,
                           int64_t* argmax, void* shifted_lse, void* gathered, void* target, cudaStream_t stream) {
  using A = acc_t<T>;
  const int threads = threads_for_row(vocab, Vector<T>::kSize);
  bellman_stats_forward_kernel<T><<<static_cast<unsigned>(num_rows), threads, 0, stream>>>(
      static_cast<int>(vocab), static_cast<const T*>(logits), logits_row_stride,
      static_cast<const T*>(ckpt_logits), ckpt_row_stride, actions, static_cast<A*>(max), argmax,
      static_cast<A*>(shifted_lse), static_cast<A*>(gathered), static_cast<A*>(target));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(int64_t num_rows, int64_t vocab, const void* logits, int64_t logits_row_stride,
                            const int64_t* actions, const int64_t* argmax, const void* shifted_lse,
                            const void* grad_max, const void* grad_shifted_lse, const void* grad_gathered,
                            void* grad, int64_t grad_row_stride, cudaStream_t stream) {
  using A = acc_t<T>;
  const int threads = threads_for_row(vocab, Vector<T>::kSize);
  bellman_stats_backward_kernel<T><<<static_cast<unsigned>(num_rows), threads, 0, stream>>>(
      static_cast<int>(vocab), static_cast<const T*>(logits), logits_row_stride, actions, argmax,
      static_cast<const A*>(shifted_lse), static_cast<const A*>(grad_max), static_cast<const A*>(grad_shifted_lse),
      static_cast<const A*>(grad_gathered), static_cast<T*>(grad), grad_row_stride);
  return cudaGetLastError();
}

}  // namespace

cudaError_t bellman_stats_forward(LogitsDtype dtype, int64_t num_rows, int64_t vocab, const void* logits,
                                  int64_t logits_row_stride, const void* ckpt_logits, int64_t ckpt_row_stride,
                                  const int64_t* actions, void* max, int64_t* argmax, void* shifted_lse,
                                  void* gathered, void* target, cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  if (!launchable(num_rows, vocab)) return cudaErrorInvalidValue;
  switch (dtype) {
    case LogitsDtype::kFloat16:
      return launch_forward<__half>(num_rows, vocab, logits, logits_row_stride, ckpt_logits, ckpt_row_stride,
                                    actions, max, argmax, shifted_lse, gathered, target, stream);
    case LogitsDtype::kBFloat16:
      return launch_forward<__nv_bfloat16>(num_rows, vocab, logits, logits_row_stride, ckpt_logits,
                                           ckpt_row_stride, actions, max, argmax, shifted_lse, gathered, target,
                                           stream);
    case LogitsDtype::kFloat32:
      return launch_forward<float>(num_rows, vocab, logits, logits_row_stride, ckpt_logits, ckpt_row_stride,
                                   actions, max, argmax, shifted_lse, gathered, target, stream);
    case LogitsDtype::kFloat64:
      return launch_forward<double>(num_rows, vocab, logits, logits_row_stride, ckpt_logits, ckpt_row_stride,
                                    actions, max, argmax, shifted_lse, gathered, target, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t bellman_stats_backward(LogitsDtype dtype, int64_t num_rows, int64_t vocab, const void* logits,
                                   int64_t logits_row_stride, const int64_t* actions, const int64_t* argmax,
                                   const void* shifted_lse, const void* grad_max, const void* grad_shifted_lse,
                                   const void* grad_gathered, void* grad, int64_t grad_row_stride,
                                   cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  if (!launchable(num_rows, vocab)) return cudaErrorInvalidValue;
  switch (dtype) {
    case LogitsDtype::kFloat16:
      return launch_backward<__half>(num_rows, vocab, logits, logits_row_stride, actions, argmax, shifted_lse,
                                     grad_max, grad_shifted_lse, grad_gathered, grad, grad_row_stride, stream);
    case LogitsDtype::kBFloat16:
      return launch_backward<__nv_bfloat16>(num_rows, vocab, logits, logits_row_stride, actions, argmax,
                                            shifted_lse, grad_max, grad_shifted_lse, grad_gathered, grad,
                                            grad_row_stride, stream);
    case LogitsDtype::kFloat32:
      return launch_backward<float>(num_rows, vocab, logits, logits_row_stride, actions, argmax, shifted_lse,
                                    grad_max, grad_shifted_lse, grad_gathered, grad, grad_row_stride, stream);
    case LogitsDtype::kFloat64:
      return launch_backward<double>(num_rows, vocab, logits, logits_row_stride, actions, argmax, shifted_lse,
                                     grad_max, grad_shifted_lse, grad_gathered, grad, grad_row_stride, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace bcoder
