# The C hot path is built by cffi from pylog/_build.py (out-of-line API mode).
from setuptools import setup

setup(cffi_modules=["pylog/_build.py:ffibuilder"])
