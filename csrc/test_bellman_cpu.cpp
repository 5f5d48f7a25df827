// Native test of the CPU kernels (run by ctest): bellman_stats_cpu and its backward against
// plain double-precision loops, on rows wider than the kernel's chunk, with ties, -inf, padding
// and bf16 inputs. The Python tests cover the rest against bcoder.reference.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "bellman.h"

namespace {

int failures = 0;

void expect_near(double got, double want, double tol, const char* what, int64_t row) {
  const bool same_inf = std::isinf(got) && got == want;
  if (!same_inf && !(std::abs(got - want) <= tol)) {
    std::printf("FAIL %s row %lld: got %.9g, want %.9g\n", what, static_cast<long long>(row), got, want);
    ++failures;
  }
}

void check_case(at::ScalarType dtype, int64_t rows, int64_t vocab) {
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor logits = (at::randn({rows, vocab}, at::kDouble) * 3).to(dtype);
  at::Tensor ckpt = at::randn({rows, vocab}, at::kDouble).to(dtype);
  at::Tensor actions = at::randint(0, vocab, {rows}, at::kLong);
  logits[0].fill_(1.5);  // all tied: argmax 0
  if (rows > 2) {
    logits[1].slice(0, 0, vocab / 2).fill_(-inf);
    logits[2].fill_(-inf);
  }
  if (rows > 3) actions[3] = -1;  // padding
  auto [row_max, argmax, shifted_lse, gathered, target] =
      bcoder::bellman_stats_cpu(logits, ckpt, actions, /*inplace_backward=*/false);
  at::Tensor grad_max = at::randn({rows}, at::kFloat), grad_slse = at::randn({rows}, at::kFloat);
  at::Tensor grad_gathered = at::randn({rows}, at::kFloat);
  grad_slse[0] = 0;  // a generated program's row: sparse gradient only
  at::Tensor grad = bcoder::bellman_stats_backward_cpu(logits, actions, argmax, shifted_lse, grad_max, grad_slse,
                                                       grad_gathered).to(at::kDouble);

  const at::Tensor x = logits.to(at::kDouble), c = ckpt.to(at::kDouble);
  const double grad_tol = dtype == at::kFloat ? 1e-5 : 2e-2;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t a = actions[i].item<int64_t>();
    if (a < 0) {
      expect_near(row_max[i].item<double>(), 0, 0, "padding max", i);
      expect_near(grad[i].abs().sum().item<double>(), 0, 0, "padding grad", i);
      continue;
    }
    double m = -inf, sum = 0;
    int64_t j = 0, j_hat = 0;
    for (int64_t k = 0; k < vocab; ++k) {
      const double v = x[i][k].item<double>();
      if (v > m) m = v, j = k;
      if (c[i][k].item<double>() > c[i][j_hat].item<double>()) j_hat = k;
    }
    for (int64_t k = 0; k < vocab && m > -inf; ++k) sum += std::exp(x[i][k].item<double>() - m);
    const double want_slse = m > -inf ? std::log(sum) : -inf;
    expect_near(row_max[i].item<double>(), m, 0, "max", i);
    expect_near(static_cast<double>(argmax[i].item<int64_t>()), static_cast<double>(j), 0, "argmax", i);
    expect_near(shifted_lse[i].item<double>(), want_slse, 1e-5, "shifted_lse", i);
    expect_near(gathered[i].item<double>(), x[i][a].item<double>(), 0, "gathered", i);
    expect_near(target[i].item<double>(), x[i][j_hat].item<double>(), 0, "target", i);
    if (m == -inf) continue;
    for (int64_t k = 0; k < vocab; ++k) {
      const double g_slse = grad_slse[i].item<double>();
      double want = g_slse * std::exp(x[i][k].item<double>() - m - want_slse);
      if (k == a) want += grad_gathered[i].item<double>();
      if (k == j) want += grad_max[i].item<double>() - g_slse;
      expect_near(grad[i][k].item<double>(), want, grad_tol * (1 + std::abs(want)), "grad", i);
    }
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    check_case(dtype, 1, 1);
    check_case(dtype, 5, 7);
    check_case(dtype, 6, 2048 * 2 + 3);
  }
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("test_bellman_cpu: all checks passed\n");
  return 0;
}
