"""Compiler flags selecting ATen's at::vec implementation for this machine's CPU.

Used by setup.py and CMakeLists.txt (`python csrc/cpu_flags.py` prints them), so both builds
compile the same kernel. BCODER_CPU_CAPABILITY=AVX512|AVX2|DEFAULT overrides the detection;
DEFAULT is portable to any x86-64 or non-x86 machine.
"""
import os

CPU_CAPABILITIES = {  # name: (cpuinfo flags required, compiler flags), best first
    "AVX512": ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"},
               ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]),
    "AVX2": ({"avx2", "fma", "f16c"}, ["-mavx2", "-mfma", "-mf16c"]),
}


def cpu_vector_flags():
    try:
        with open("/proc/cpuinfo") as f:
            available = set(f.read().split())
    except OSError:
        available = set()
    wanted = os.environ.get("BCODER_CPU_CAPABILITY")
    for name, (required, flags) in CPU_CAPABILITIES.items():
        if wanted == name or (wanted is None and required <= available):
            return flags + [f"-DCPU_CAPABILITY={name}", f"-DCPU_CAPABILITY_{name}"]
    return []


if __name__ == "__main__":
    print(";".join(cpu_vector_flags()))
