"""Only here because setuptools reads ``cffi_modules`` from setup() and not from pyproject.toml.

Everything else about the package lives in pyproject.toml. The cffi module is compiled at install time
against this machine's ``<linux/kvm.h>`` (see minivmm/_cffi_build/kvm_build.py).
"""

from setuptools import setup

setup(cffi_modules=["minivmm/_cffi_build/kvm_build.py:ffi", "minivmm/_cffi_build/trace_build.py:ffi"])
