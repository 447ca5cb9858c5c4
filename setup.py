"""Build the Cython binding with the C core (csrc/).

The C core is also compiled on its own with -Wall -Wextra -Werror by .ci/run
(`make -C csrc strict`); Cython's generated C is not held to that."""
from Cython.Build import cythonize
from setuptools import Extension, setup

native = Extension(
    "pvmmap._native",
    sources=["src/pvmmap/_native.pyx", "csrc/syscall.c", "csrc/scan.c",
             "csrc/maps.c", "csrc/copy.c", "csrc/freeze.c", "csrc/uffd.c",
             "csrc/dump.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"],
)

setup(ext_modules=cythonize([native], compiler_directives={"language_level": 3}))
