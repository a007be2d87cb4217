# The C hot path is built by cffi from pylog/_build.py (out-of-line API mode).
# pylog._fastmsg is a plain CPython extension (it builds Message objects, so
# it needs the full C API, not cffi): see csrc/fastmsg.c.  pylog._fastprod,
# likewise: Producer.produce() and the queue drain (csrc/fastprod.c).
from setuptools import Extension, setup

setup(
    cffi_modules=["pylog/_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "pylog._fastmsg",
            sources=["csrc/fastmsg.c"],
            depends=["csrc/wire.h"],
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
        ),
        Extension(
            "pylog._fastprod",
            sources=["csrc/fastprod.c"],
            depends=["csrc/wire.h"],
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
        ),
    ],
)
