# The C hot path is built by cffi from pylog/_build.py (out-of-line API mode).
# pylog._fastprod is a plain CPython extension (Producer.produce() and the
# queue drain build and hold Python objects, so it needs the full C API, not
# cffi): see csrc/fastprod.c.
from setuptools import Extension, setup

setup(
    cffi_modules=["pylog/_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "pylog._fastprod",
            sources=["csrc/fastprod.c"],
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
        ),
    ],
)
