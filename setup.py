"""Builds bcoder and its native extension bcoder._C.

The CPU kernels are compiled for the build machine's vector width: AVX-512 or AVX2+FMA when
/proc/cpuinfo reports them (set BCODER_CPU_CAPABILITY=DEFAULT for a portable build).
The CUDA kernels (csrc/bellman_cuda.cu) are added when the installed torch has CUDA and a CUDA
toolkit is found (CUDA_HOME); their architectures follow TORCH_CUDA_ARCH_LIST.
Build with `pip install --no-build-isolation -e .` so pip uses the installed torch.
"""
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


CPU_CAPABILITIES = {  # name: (cpuinfo flags required, compiler flags), best first
    "AVX512": ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"},
               ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]),
    "AVX2": ({"avx2", "fma", "f16c"}, ["-mavx2", "-mfma", "-mf16c"]),
}


def cpu_vector_flags():
    """Compiler flags selecting ATen's at::vec implementation for this machine."""
    try:
        with open("/proc/cpuinfo") as f:
            available = set(f.read().split())
    except OSError:
        available = set()
    wanted = os.environ.get("BCODER_CPU_CAPABILITY")
    for name, (required, flags) in CPU_CAPABILITIES.items():
        if (wanted == name) or (wanted is None and required <= available):
            return flags + [f"-DCPU_CAPABILITY={name}", f"-DCPU_CAPABILITY_{name}"]
    return []


cpu_sources = ["csrc/ops.cpp", "csrc/bellman_cpu.cpp"]
cxx_flags = ["-O3", "-fopenmp", "-Wno-unknown-pragmas"] + cpu_vector_flags()
if torch.version.cuda is not None and CUDA_HOME is not None:
    extension = CUDAExtension(
        "bcoder._C",
        cpu_sources + ["csrc/bellman_cuda.cu", "csrc/bellman_cuda_binding.cpp"],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )
else:
    extension = CppExtension("bcoder._C", cpu_sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])

setup(
    name="bcoder",
    version="0.1.0",
    description="Value-based deep RL for program synthesis (B-Coder): fused Bellman loss, sandbox, training",
    python_requires=">=3.10",
    packages=["bcoder", "bcoder.sandbox", "bcoder.data", "bcoder.kernels"],
    package_dir={"bcoder.kernels": "kernels"},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    install_requires=["torch>=2.4", "numpy", "tqdm"],
    extras_require={"test": ["pytest", "expecttest"], "bench": ["pytest-benchmark"]},
)
