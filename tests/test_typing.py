"""The package type-checks, and code using its public API type-checks too.

mypy reads the annotations of ``src/qmpcore`` (configured in
``pyproject.toml``), and then a small program written against the installed
package, under ``--strict``: this needs ``py.typed`` and the stub of the
compiled framer to be shipped, and the public names to carry their types.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytest.importorskip("mypy")

USER_CODE = textwrap.dedent(
    """
    import asyncio
    from typing import Any, List, Optional

    from typing_extensions import assert_type

    import qmpcore
    from qmpcore.fleet import Fleet


    def frames(data: bytes) -> List[Any]:
        framer = qmpcore.Framer(max_frame_size=1 << 20, raw=False)
        items: List[Any] = framer.feed(data)
        size: int = framer.buffered
        assert size >= 0
        return [item for item in items if item is not qmpcore.SYNC and not isinstance(item, qmpcore.FrameError)]


    async def status(path: str) -> Any:
        async with await qmpcore.connect(path, timeout=5.0) as qmp:
            future: "asyncio.Future[Any]" = qmp.submit("query-status")
            await future
            return await qmp.execute("query-status")


    async def fleet_status(paths: List[str]) -> int:
        async with Fleet(paths, command_timeout=2.0) as fleet:
            results = await fleet.execute_all("query-status")
            return sum(1 for value in results.values() if not isinstance(value, BaseException))


    def blocking(path: str) -> Any:
        with qmpcore.connect_sync(path) as qmp:
            return qmp.execute("query-name")


    line: bytes = qmpcore.encode({"execute": "query-status"})
    kind: str = qmpcore.implementation


    async def typed_clients(path: str) -> None:
        # The README's pattern: vm is a QMPClient, not Any, with or without await.
        async with qmpcore.connect(path, max_depth=64, max_tokens=1000) as vm:
            assert_type(vm, qmpcore.QMPClient)
            ev = await vm.wait_event("STOP", timeout=1.0)
            assert_type(ev, qmpcore.Event)
            data: Any = ev["data"]
            when: Optional[float] = ev.timestamp
            stamp: Any = ev.get("timestamp")
        qmp = await qmpcore.connect(path)
        assert_type(qmp, qmpcore.QMPClient)
        async with qmp as again:
            assert_type(again, qmpcore.QMPClient)
        async with qmpcore.connect_guest_agent(path, max_frame_size=1 << 20) as ga:
            assert_type(ga, qmpcore.GuestAgentClient)
            await ga.execute("guest-ping")
        async with await qmpcore.connect_guest_agent(path) as ga2:
            assert_type(ga2, qmpcore.GuestAgentClient)
        with qmpcore.connect_sync(path, max_depth=64) as sync_vm:
            assert_type(sync_vm, qmpcore.SyncQMPClient)
            assert_type(sync_vm.pull_event(0), qmpcore.Event)
        with qmpcore.connect_guest_agent_sync(path, max_tokens=100) as sync_ga:
            assert_type(sync_ga, qmpcore.SyncGuestAgentClient)


    def errors(path: str) -> Optional[str]:
        try:
            with qmpcore.connect_sync(path) as vm:
                vm.execute("device_del", {"id": "nic0"})
        except qmpcore.DeviceNotFound as exc:
            name: str = exc.error_class
            return exc.desc
        except qmpcore.CommandError as exc:
            subclass: qmpcore.CommandError = qmpcore.CommandError.from_reply("GenericError", "x")
            return exc.desc
        except qmpcore.ConnectError as exc:
            code: Optional[int] = exc.errno
            where: object = exc.address
            return exc.hint
        return None
    """
)


def _mypy(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _as_installed(tmp_path: pathlib.Path) -> list[str]:
    """mypy options that read the checkout's package as if installed: its
    types are used, its own strictness is not the user's concern."""
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nmypy_path = {REPO / 'src'}\n\n[mypy-qmpcore.*]\nignore_errors = True\n")
    return ["--config-file", str(config)]


@pytest.mark.slow
def test_the_package_type_checks() -> None:
    result = _mypy(cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_code_using_the_public_api_type_checks(tmp_path) -> None:
    program = tmp_path / "user.py"
    program.write_text(USER_CODE)
    result = _mypy("--strict", "--no-warn-unused-ignores", *_as_installed(tmp_path), str(program), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_exported_name_resolves() -> None:
    import qmpcore

    assert set(qmpcore._LAZY) <= set(qmpcore.__all__)
    for name in qmpcore.__all__:
        assert getattr(qmpcore, name) is not None, name


def test_lazy_names_are_listed_and_documented() -> None:
    import qmpcore

    listed = dir(qmpcore)
    assert set(qmpcore._LAZY) <= set(listed) and listed == sorted(listed)
    assert {"Framer", "ConnectError", "DeviceNotFound", "__version__"} <= set(listed)
    doc = qmpcore.__doc__ or ""
    for name in qmpcore._LAZY:
        assert f"`{name}`" in doc, name
