"""Build the compiled framer; fall back to the pure-Python twin without it.

``pip install .`` compiles ``src/_framer.pyx`` into ``qmpcore.framing._framer`` when
a C compiler is available.  When compilation fails (or
``QMPCORE_NO_EXTENSIONS=1`` is set at build time) the package still installs
and uses ``qmpcore.framing.pure``.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = os.environ.get("QMPCORE_NO_EXTENSIONS", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """Turn a failed compile into a warning: the pure twin serves instead."""

    def run(self):
        try:
            super().run()
        except Exception as exc:
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        sys.stderr.write(
            f"WARNING: qmpcore's compiled framer could not be built ({exc}); the pure-Python framer will be used.\n"
        )


def extensions():
    if NO_EXTENSIONS:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write("WARNING: Cython is not available; using the pure-Python framer.\n")
        return []
    from setuptools import Extension

    macros = []
    directives = {"language_level": "3", "boundscheck": False, "wraparound": False, "cdivision": True}
    if os.environ.get("QMPCORE_CYTHON_TRACE"):
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE", "1"))
    cflags = os.environ.get("QMPCORE_CFLAGS", "-O3").split()
    ext = Extension(
        "qmpcore.framing._framer",
        ["src/_framer.pyx"],
        include_dirs=["src"],
        depends=["src/_scan.h"],
        define_macros=macros,
        extra_compile_args=cflags if os.name != "nt" else [],
        extra_link_args=os.environ.get("QMPCORE_LDFLAGS", "").split(),
    )
    return cythonize([ext], compiler_directives=directives)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
