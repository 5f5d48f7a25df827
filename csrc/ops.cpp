// Registers the fused Bellman-loss ops (schemas and the CPU kernels) and makes bcoder._C a
// Python module whose import loads them. Fake kernels and autograd are registered in
// bcoder/ops.py; the CUDA kernels register themselves in bellman_cuda_binding.cpp.
#include <Python.h>
#include <torch/library.h>

#include "bellman.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(bcoder, m) {
  // inplace_backward only tells the autograd formula (bcoder/ops.py) to write the gradient over
  // `logits`; kernels ignore it.
  m.def("bellman_stats(Tensor logits, Tensor? ckpt_logits, Tensor actions, bool inplace_backward=False)"
        " -> (Tensor max, Tensor argmax, Tensor shifted_lse, Tensor gathered, Tensor target)");
  m.def("bellman_stats_backward(Tensor logits, Tensor actions, Tensor argmax, Tensor shifted_lse,"
        " Tensor grad_max, Tensor grad_shifted_lse, Tensor grad_gathered) -> Tensor");
  m.def("bellman_stats_backward_(Tensor(a!) logits, Tensor actions, Tensor argmax, Tensor shifted_lse,"
        " Tensor grad_max, Tensor grad_shifted_lse, Tensor grad_gathered) -> ()");
}

TORCH_LIBRARY_IMPL(bcoder, CPU, m) {
  m.impl("bellman_stats", &bcoder::bellman_stats_cpu);
  m.impl("bellman_stats_backward", &bcoder::bellman_stats_backward_cpu);
  m.impl("bellman_stats_backward_", &bcoder::bellman_stats_backward_cpu_);
}
