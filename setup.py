"""Builds bcoder and its native extensions: bcoder._C (the fused op) and bcoder.sandbox._process.

The CPU kernels are compiled for the build machine's vector width: AVX-512 or AVX2+FMA when
/proc/cpuinfo reports them (set BCODER_CPU_CAPABILITY=DEFAULT for a portable build; see
csrc/cpu_flags.py).
The CUDA kernels (csrc/bellman_cuda.cu) are added when the installed torch has CUDA and a CUDA
toolkit is found (CUDA_HOME); their architectures follow TORCH_CUDA_ARCH_LIST.
Build with `pip install --no-build-isolation -e .` so pip uses the installed torch.
"""
import os
import runpy

import torch
from setuptools import Extension, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def cpu_vector_flags():
    """The at::vec flags for this CPU, shared with CMakeLists.txt (csrc/cpu_flags.py)."""
    return runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "cpu_flags.py"))[
        "cpu_vector_flags"]()


cpu_sources = ["csrc/ops.cpp", "csrc/bellman_cpu.cpp"]
cxx_flags = ["-O3", "-fopenmp", "-Wno-unknown-pragmas"] + cpu_vector_flags()
if torch.version.cuda is not None and CUDA_HOME is not None:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU to read the architecture from (a build machine): the ones CMakeLists.txt targets.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    extension = CUDAExtension(
        "bcoder._C",
        cpu_sources + ["csrc/bellman_cuda.cu", "csrc/bellman_cuda_binding.cpp"],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )
else:
    extension = CppExtension("bcoder._C", cpu_sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])

# The sandbox worker's loop (plain C and the CPython API: it loads in the worker, which imports nothing it
# does not need).
sandbox_extension = Extension("bcoder.sandbox._process", ["csrc/sandbox_process.c"], extra_compile_args=["-O2"])

setup(
    name="bcoder",
    version="0.1.0",
    description="Value-based deep RL for program synthesis (B-Coder): fused Bellman loss, sandbox, training",
    python_requires=">=3.10",
    # bcoder/kernels links to the top-level kernels/ (the Triton sources), a folder without __init__.py:
    # from the checkout's root, `import kernels` must find the installed `kernels` distribution.
    packages=["bcoder", "bcoder.sandbox", "bcoder.data", "bcoder.kernels"],
    package_data={"bcoder.data": ["files/*"]},
    ext_modules=[extension, sandbox_extension],
    cmdclass={"build_ext": BuildExtension},
    # Lower bounds: the first releases with the APIs used (torch 2.6: public FSDP2 `fully_shard` and
    # torch.library.triton_op; transformers 5: transformers.initialization; peft 0.17). No upper bounds:
    # no newer major release is known to break. The versions CI tested are pinned in constraints.txt.
    install_requires=["torch>=2.6", "numpy>=1.24", "tqdm", "transformers>=5.0", "peft>=0.17", "safetensors>=0.4",
                      "matplotlib", "scipy"],
    extras_require={
        "fetch": ["huggingface_hub>=0.23", "pyarrow>=14"],   # python -m bcoder.data fetch
        "test": ["pytest", "pytest-benchmark", "expecttest", "triton", "pyarrow>=14", "ruff"],
    },
)
