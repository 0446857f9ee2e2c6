"""Only here to hand the cffi build script to setuptools; metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["cext/build_core.py:ffibuilder"])
