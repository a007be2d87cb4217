"""cffi build script (out-of-line API mode): compiles csrc/ into pylog._native.

setup.py names this file in cffi_modules; `pip install .` runs it.  The cdef is
csrc/pylog.h itself, less the preprocessor lines cffi cannot parse, so the C
header stays the single source of truth for structs, codes and prototypes.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
SOURCES = ["crc32c.c", "batch.c", "dedup.c", "partition.c", "notify.c"]


def _cdef_text():
    with open(os.path.join(CSRC, "pylog.h")) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#include")]
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "pylog._native",
    '#include "pylog.h"',
    sources=[os.path.relpath(os.path.join(CSRC, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(CSRC)],
    depends=[os.path.relpath(os.path.join(CSRC, h)) for h in ("pylog.h", "wire.h")],
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-D_GNU_SOURCE"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
