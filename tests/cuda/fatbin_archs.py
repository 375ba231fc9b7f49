#!/usr/bin/env python3
"""fatbin_archs.py BINARY [--want sm_90 ...]

Lists the GPU code a host binary, object or static library carries: every
fatbin in its .nv_fatbin section(s) (objcopy), each entry as sm_NN (machine
code) or compute_NN (PTX). With --want, exits 1 unless each named entry is
there. Used by CTest (cuda_arch) where no cuobjdump is installed; on a
machine with cuobjdump, `cuobjdump --list-elf/--list-ptx` says the same.

Fatbin layout (as nvcc 12/13 writes it): a 16-byte header (magic
0xBA55ED50, u16 version, u16 header size, u64 payload size), then entries,
each with a header of its own: u16 kind (1 PTX, 2 ELF), u16 flags, u32
header size, u64 payload size, ..., u32 architecture at offset 28.
"""
import os
import struct
import subprocess
import sys
import tempfile

MAGIC = 0xBA55ED50


def sections(path):
    """The bytes of every .nv_fatbin section (one per archive member)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "fb")
        # objcopy on an archive writes one output per member: dump members
        # one by one instead
        if open(path, "rb").read(8) == b"!<arch>\n":
            subprocess.run(["ar", "x", os.path.abspath(path)], cwd=tmp, check=True)
            members = [os.path.join(tmp, f) for f in sorted(os.listdir(tmp)) if f != "fb"]
        else:
            members = [path]
        for m in members:
            r = subprocess.run(["objcopy", "-O", "binary", "--only-section=.nv_fatbin", m, out],
                               capture_output=True)
            if r.returncode == 0 and os.path.exists(out):
                yield open(out, "rb").read()
                os.unlink(out)


def entries(blob):
    pos = 0
    while pos + 16 <= len(blob):
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", blob, pos)
        if magic != MAGIC:
            pos += 8  # fatbins are 8-byte aligned in the section
            continue
        e, end = pos + hsize, pos + hsize + fsize
        while e + 32 <= end:
            kind, _flags, ehsize, psize = struct.unpack_from("<HHIQ", blob, e)
            arch = struct.unpack_from("<I", blob, e + 28)[0]
            if kind == 1:
                yield f"compute_{arch}"
            elif kind == 2:
                yield f"sm_{arch}"
            if ehsize == 0:
                break
            e += ehsize + psize
        pos = end


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    path, want = args[0], []
    if "--want" in args:
        want = args[args.index("--want") + 1:]
    found = sorted({x for blob in sections(path) for x in entries(blob)})
    print(f"{os.path.basename(path)}: {' '.join(found) or 'no GPU code'}")
    missing = [w for w in want if w not in found]
    if missing:
        print(f"missing: {' '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
