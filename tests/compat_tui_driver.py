"""Drive QEMU's ``qmp_tui`` headless against a QMP server; print what it shows.

Run as ``python compat_tui_driver.py BACKEND ADDRESS LINE...``: BACKEND is
``reference`` (qemu.qmp 0.0.6 itself) or ``qmpcore`` (``qemu.qmp`` mapped
to qmpcore.compat by its importer, as a user would run it).  Each LINE is
typed into the TUI's editor and sent with alt+enter, as a user does; the
history box (messages, and log records routed to it by the TUI's own log
handler) is printed as JSON, one entry per line of the box.  The line
``@disconnected`` waits for the status bar to say so instead (after
``quit``, say), then for the reconnection attempt to fail.  The statuses
shown follow the history.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

TIMEOUT = 20.0


async def drive(tui, address: str, lines: list[str]) -> list[str]:
    app = tui.App(address, num_retries=0, retry_delay=None)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    root.addHandler(tui.TUILogHandler(app))
    statuses: list[str] = []  # every status the bar showed
    show_status = app._set_status

    def record_status(msg: str) -> None:
        statuses.append(msg)
        show_status(msg)

    app._set_status = record_status
    connect_server = app.connect_server
    connects = 0

    async def connect_when_gone():
        # QEMU closes the connection before it removes its socket on exit: a
        # reconnect in between is refused rather than not finding the
        # socket.  Reconnects wait for the socket to go, as a user's would
        # come later, so both backends meet the same server state.
        nonlocal connects
        connects += 1
        if connects > 1 and isinstance(address, str):
            await until(lambda: not os.path.exists(address))
        return await connect_server()

    app.connect_server = connect_when_gone
    manager = asyncio.create_task(app.manage_connection())
    history = app.window.body.history.history  # the HistoryBox's list walker
    editor = app.window.body.editor_widget.original_widget

    async def until(condition) -> None:
        async def poll() -> None:
            while not condition():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(poll(), TIMEOUT)

    await until(lambda: app.window.footer.text.startswith("[Connected"))

    def shown() -> list[str]:
        return [widget.get_text()[0] for widget in history]

    def replies() -> int:
        return sum(1 for e in shown() if e.startswith("--> ") and ('"return"' in e or '"error": {' in e))

    for line in lines:
        if line == "@disconnected":  # wait for the status bar to say so
            await until(lambda: "[Disconnected]" in statuses)
            # then for the reconnection attempt to fail
            await until(lambda: any("Failed to establish connection" in e for e in shown()))
            continue
        before, answered = len(history), replies()
        editor.set_edit_text(line)
        editor.keypress((80,), "meta enter")
        message = json.loads(line) if line.startswith("{") else None
        if isinstance(message, dict) and ("execute" in message or "exec-oob" in message):
            await until(lambda: replies() > answered)  # noqa: B023
        else:  # one entry: the error
            await until(lambda: len(history) > before)  # noqa: B023
    await asyncio.sleep(0.2)  # events that follow the last reply
    app.exiting = True
    await app.disconnect()
    manager.cancel()
    try:
        await manager
    except asyncio.CancelledError:
        pass
    return [*shown(), *(f"status: {status}" for status in statuses)]


def main() -> None:
    backend, address, *lines = sys.argv[1:]
    if backend == "qmpcore":
        from qmpcore.compat import importer

        importer.install()
    import qemu.qmp.qmp_tui as tui

    if backend == "qmpcore":
        assert tui.QMPClient.__module__ == "qmpcore.compat.qemu_qmp", tui.QMPClient
    out = asyncio.run(drive(tui, address, lines))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
