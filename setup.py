"""Builds bcoder and its native extension bcoder._C.

The CPU kernels are compiled for the build machine's vector width: AVX2+FMA when
/proc/cpuinfo reports them (set BCODER_NO_AVX2=1 to build a portable baseline).
Build with `pip install --no-build-isolation -e .` so pip uses the installed torch.
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension


def cpu_vector_flags():
    if os.environ.get("BCODER_NO_AVX2") == "1":
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return []
    if {"avx2", "fma", "f16c"} <= flags:
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


cpu_sources = sorted(set(glob.glob("csrc/*.cpp")) - set(glob.glob("csrc/test_*.cpp")))
extension = CppExtension(
    "bcoder._C",
    cpu_sources,
    extra_compile_args=["-O3", "-fopenmp", "-std=c++17"] + cpu_vector_flags(),
    extra_link_args=["-fopenmp"],
)

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
