"""Run code written for qemu.qmp 0.0.6 on the adapters, unchanged.

:func:`install` makes ``import qemu.qmp`` (and its submodules ``error``,
``events``, ``legacy``, ``message``, ``models``, ``protocol``,
``qmp_client``, ``util``) load :mod:`qmpcore.compat` instead.  Other
modules of the ``qemu.qmp`` package, such as QEMU's ``qmp_shell`` and
``qmp_tui``, are still found where qemu.qmp (or a QEMU source tree on
``sys.path``) has them, and import the adapters through the mapping::

    from qmpcore.compat import importer
    importer.install()
    from qemu.qmp.qmp_shell import main   # QEMU's qmp-shell, on qmpcore
    main()

The same from the command line: ``python -m qmpcore.compat
qemu.qmp.qmp_shell /run/vm1/qmp.sock``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

__all__ = ["install", "uninstall", "installed", "MODULES"]

#: qemu.qmp module -> the adapter module that stands in for it.
MODULES = {
    "qemu.qmp.error": "qmpcore.compat._errors",
    "qemu.qmp.events": "qmpcore.compat._events",
    "qemu.qmp.legacy": "qmpcore.compat.legacy",
    "qemu.qmp.message": "qmpcore.compat._message",
    "qemu.qmp.models": "qmpcore.compat._models",
    "qemu.qmp.protocol": "qmpcore.compat._protocol",
    "qemu.qmp.qmp_client": "qmpcore.compat.qemu_qmp",
    "qemu.qmp.util": "qmpcore.compat._util",
}
_PACKAGE = "qemu.qmp"
#: The adapter of ``qemu.qmp.qmp_client``; it also names what ``qemu.qmp`` exports.
_ADAPTER = "qmpcore.compat.qemu_qmp"


class _Loader(importlib.abc.Loader):
    """Puts the adapter module in place of the one imported."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # a placeholder; exec_module replaces it

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        if name == _PACKAGE:
            adapter = importlib.import_module(_ADAPTER)
            names = adapter._PACKAGE_NAMES
            for key in names:
                setattr(module, key, getattr(adapter, key))
            module.__all__ = names  # type: ignore[attr-defined]
            module.__doc__ = adapter.__doc__
            # As qemu.qmp's __init__, which imports them: qemu.qmp.protocol works.
            for sub in MODULES:
                importlib.import_module(sub)
            return
        # importlib takes the module from sys.modules after this returns.
        sys.modules[name] = importlib.import_module(MODULES[name])


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``qemu.qmp`` and the mapped submodules; nothing else."""

    def __init__(self) -> None:
        self._loader = _Loader()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == _PACKAGE:
            spec = importlib.machinery.ModuleSpec(fullname, self._loader, is_package=True)
            # Unmapped submodules (qmp_shell, qmp_tui, ...) come from the real package.
            spec.submodule_search_locations = _real_package_path(path)
            return spec
        if fullname in MODULES:
            return importlib.machinery.ModuleSpec(fullname, self._loader)
        return None


def _real_package_path(parent_path: Sequence[str] | None) -> list[str]:
    """Where the real ``qemu/qmp`` directory is, if anywhere."""
    spec = importlib.machinery.PathFinder.find_spec(_PACKAGE, parent_path)
    if spec is None or spec.submodule_search_locations is None:
        return []
    return list(spec.submodule_search_locations)


_finder: _Finder | None = None


def installed() -> bool:
    """True while the mapping is in place."""
    return _finder is not None and _finder in sys.meta_path


def install() -> None:
    """Map ``qemu.qmp`` to the adapters for every later import.

    :raise RuntimeError: if the real ``qemu.qmp`` was imported already (its
        classes would then mix with the adapter's).
    """
    global _finder
    if installed():
        return
    loaded = [name for name in (_PACKAGE, *MODULES) if name in sys.modules]
    if loaded:
        raise RuntimeError(
            f"qemu.qmp is imported already ({', '.join(loaded)}): call install() before anything imports it"
        )
    _finder = _Finder()
    sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Remove the mapping and forget the ``qemu.qmp`` modules imported through it."""
    global _finder
    if _finder is None:
        return
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None
    for name in [n for n in sys.modules if n == _PACKAGE or n.startswith(_PACKAGE + ".")]:
        del sys.modules[name]
