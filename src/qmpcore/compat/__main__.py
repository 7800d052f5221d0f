"""``python -m qmpcore.compat MODULE [ARGS...]``: run a qemu.qmp program
(``qemu.qmp.qmp_shell``, ``qemu.qmp.qmp_tui``, your own) on the adapters."""

from __future__ import annotations

import runpy
import sys

from . import importer


def main(argv: list[str] | None = None) -> None:
    """Install the ``qemu.qmp`` mapping, then run ``argv[0]`` as ``__main__``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m qmpcore.compat MODULE [ARGS...]\n"
            "  runs MODULE (e.g. qemu.qmp.qmp_shell) with qemu.qmp mapped to qmpcore.compat"
        )
        raise SystemExit(0 if args else 2)
    importer.install()
    sys.argv = list(args)
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
