# The C hot path is built by cffi from pylog/_build.py (out-of-line API mode).
# pylog._fastmsg is a plain CPython extension (it builds Message objects, so
# it needs the full C API, not cffi): see csrc/fastmsg.c.  pylog._fastprod,
# likewise: Producer.produce() and the queue drain (csrc/fastprod.c).
from setuptools import Extension, setup


def c_extension(name, *sources):
    return Extension(name, sources=list(sources), depends=["csrc/wire.h", "csrc/message_type.h"],
                     extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                         "-Wno-missing-field-initializers"])


setup(
    cffi_modules=["pylog/_build.py:ffibuilder"],
    ext_modules=[c_extension("pylog._fastmsg", "csrc/fastmsg.c", "csrc/message_type.c"),
                 c_extension("pylog._fastprod", "csrc/fastprod.c")],
)
