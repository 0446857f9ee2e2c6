"""``reedge node sim``: the virtual sensor node (real MicroPython, ``hil.virtual_node``) served on a pseudo-terminal
until Ctrl-C, so that a technician can rehearse ``reedge boards list --probe``, ``reedge flash`` and a station's
sensor node without a Pico.

The node starts blank (MicroPython's REPL, no firmware) unless ``--fs`` names a folder that already holds one:
that folder is the node's flash, kept after the sim ends, so a second ``reedge flash`` finds what the first wrote.
``--link PATH`` makes a symlink to the pty (what ``/dev/serial/by-id/...`` is for a real node), so the commands
that follow can name a fixed port. Ctrl-C, SIGTERM and SIGHUP (the terminal closed) end it the same way: the
interpreter killed, the pty closed, the link and any temporary flash folder removed, exit 0.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
from typing import TextIO

from hil.virtual_node import VirtualNode

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _check_link(link: pathlib.Path) -> None:
    """A link may replace an old symlink (a sim that was killed -9), never a file or folder of someone else's."""
    if link.exists() and not link.is_symlink():
        raise ValueError(f"--link {link}: exists and is not a symlink; nothing was changed (choose another name)")
    if not link.parent.is_dir():
        raise ValueError(f"--link {link}: no such folder {link.parent}")


def serve(fs_dir: pathlib.Path | None, link: pathlib.Path | None, unique_id: str, out: TextIO = sys.stdout) -> int:
    """Run the virtual node until a stop signal; 0 after a clean stop, 1 if the interpreter died on its own."""
    if fs_dir is not None and not fs_dir.is_dir():
        raise ValueError(f"--fs {fs_dir}: no such folder (it is the node's flash: create it, or leave --fs out "
                         "for a blank node)")
    if link is not None:
        _check_link(link)
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        stop.set()

    # the handlers go in first: a Ctrl-C while the interpreter starts must still clean up, not leave it running
    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    temporary = None if fs_dir is not None else pathlib.Path(tempfile.mkdtemp(prefix="reedge-node-sim-"))
    flash = fs_dir if fs_dir is not None else temporary
    assert flash is not None
    code = 0
    try:
        with VirtualNode(flash, unique_id=unique_id) as node:
            port = node.port
            if link is not None:
                tmp = link.with_name(link.name + ".new")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(port)
                tmp.replace(link)
                port = str(link)
            print(f"virtual sensor node on {port} (pty {os.path.realpath(node.port)}, USB serial {unique_id}); "
                  f"flash folder {flash}{' (temporary)' if temporary else ''}", file=out)
            print("ready: use this port with reedge boards list --port, reedge flash --port; Ctrl-C stops it",
                  file=out, flush=True)
            while not stop.wait(0.2):
                if node.resets and node.resets[-1].startswith("crash"):
                    print(f"the MicroPython interpreter died ({node.resets[-1]}):\n{node.log()[-2000:]}", file=out)
                    code = 1
                    break
    finally:
        if link is not None and link.is_symlink():
            with contextlib.suppress(OSError):
                if "vnode-" in os.readlink(link):    # ours (VirtualNode's folder), not a link made meanwhile
                    link.unlink()
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        for s, handler in old.items():
            signal.signal(s, handler)
    if got:
        print(f"stopped ({signal.Signals(got[0]).name}): node powered off, pty closed", file=out, flush=True)
    return code
