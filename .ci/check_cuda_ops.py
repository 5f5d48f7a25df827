"""Checks a CUDA build of bcoder._C without a GPU: every bcoder:: op it registers has a CUDA kernel.

CI (.ci/run) builds the extension out of tree against the CUDA build of torch and runs

    PYTHONPATH=build/cuda/lib build/cuda/venv/bin/python .ci/check_cuda_ops.py \
        --expect-dir build/cuda/lib --sass 80,90

It imports bcoder._C (registering its ops needs no device), prints each bcoder:: op with the
dispatch keys it has kernels for, and exits 1 when an op has no CUDA kernel (nor a
CompositeExplicitAutograd/CompositeImplicitAutograd one, which serves CUDA too), when no op is
registered, when the imported bcoder._C is not the one under --expect-dir (e.g. the CPU build of
an editable install), or when the CUDA code embedded in it lacks an architecture of --sass.
"""
import argparse
import os
import re
import struct
import sys

# Kernels that serve the CUDA dispatch key, the first being the one we want.
CUDA_SERVING_KEYS = ("CUDA", "CompositeExplicitAutograd", "CompositeImplicitAutograd")


def registered_keys(op):
    """The dispatch keys with a kernel registered for `op` itself (fallbacks excluded)."""
    import torch

    # "name: ...", "schema: ...", "debug: registered at ...", then "KEY: registered at ..."
    dump = torch._C._dispatch_dump(op)
    return [m.group(1) for m in re.finditer(r"^(\w+): registered at ", dump, re.M) if m.group(1) != "debug"]


def fatbin_archs(path):
    """{kind: sorted SM archs} of the CUDA code in an ELF shared library's .nv_fatbin section,
    kind "sass" (cubins) or "ptx". Empty when the library has no such section."""
    data = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    strtab = section(shstrndx)[1]
    archs = {"sass": set(), "ptx": set()}
    for i in range(shnum):
        name, offset, size = section(i)
        if data[strtab + name: data.index(b"\0", strtab + name)] != b".nv_fatbin":
            continue
        pos, end = offset, offset + size
        while pos + 16 <= end:  # fatbin containers, 8-byte aligned
            magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
            if magic != 0xBA55ED50:
                pos += 8
                continue
            entry, entries_end = pos + header_size, pos + header_size + fat_size
            while entry < entries_end:
                kind, _, entry_header_size, payload_size = struct.unpack_from("<HHIQ", data, entry)
                arch, = struct.unpack_from("<I", data, entry + 28)
                archs.setdefault({1: "ptx", 2: "sass"}.get(kind, f"kind {kind}"), set()).add(arch)
                entry += entry_header_size + payload_size
            pos = entries_end
    return {kind: sorted(a) for kind, a in archs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-dir", help="bcoder._C must be imported from under this directory")
    parser.add_argument("--sass", default="", help="comma-separated SM archs (e.g. 80,90) whose SASS must be embedded")
    args = parser.parse_args(argv)

    import torch

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA device available: {torch.cuda.is_available()}")
    from bcoder import _C

    print(f"bcoder._C: {_C.__file__}")
    errors = []
    if torch.version.cuda is None:
        errors.append("this torch is a CPU build: the check needs the CUDA build of torch")
    if args.expect_dir and not os.path.realpath(_C.__file__).startswith(os.path.realpath(args.expect_dir) + os.sep):
        errors.append(f"bcoder._C was not imported from {args.expect_dir}")

    archs = fatbin_archs(_C.__file__)
    print("embedded CUDA code: SASS " + (", ".join(f"sm_{a}" for a in archs["sass"]) or "none")
          + "; PTX " + (", ".join(f"compute_{a}" for a in archs["ptx"]) or "none"))
    for arch in filter(None, args.sass.split(",")):
        if int(arch) not in archs["sass"]:
            errors.append(f"no SASS for sm_{arch} in {_C.__file__}")

    ops = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("bcoder::"))
    if not ops:
        errors.append("bcoder._C registered no bcoder:: op")
    for op in ops:
        keys = registered_keys(op)
        serving = [key for key in CUDA_SERVING_KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]
        verdict = f"ok: {serving[0]} kernel" if serving else "MISSING a CUDA kernel"
        print(f"  {op:32} kernels: {', '.join(keys) or '-':40} {verdict}")
        if not serving:
            errors.append(f"{op} has no CUDA kernel")

    for error in errors:
        print(f"error: {error}")
    print(f"{len(ops)} bcoder:: ops, {'FAILED' if errors else 'all with a CUDA kernel'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
