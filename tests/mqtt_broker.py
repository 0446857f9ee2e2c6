"""Real brokers and a real consumer for the MQTT tests: mosquitto processes, a cuttable TCP proxy, a checker.

* ``Mosquitto``: a mosquitto process on a free loopback port with its own config file, persistence
  and log in a temp dir; ``stop`` (SIGTERM, it saves its state), ``kill`` (SIGKILL), ``start`` again
  on the same port. Never the system's mosquitto: the package may have started one on 1883.
* ``TcpProxy``: between the edge and the broker; ``cut`` black-holes it (connections stay open, no
  byte passes: a pulled cable, which only keepalive can detect), ``restore`` closes the dead
  connections and forwards again.
* ``Consumer``: a paho client with a persistent session (fixed client id, clean start off), up
  throughout, that records every envelope it receives; ``verify`` checks that every stream's
  sequence numbers arrived in order from 1 to the expected last, duplicates allowed only as
  byte-identical copies of a message already received.

When mosquitto is missing the tests fail under CI (``CI`` set) and skip with the reason elsewhere;
``./dev test`` installs it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.telemetry.envelope import EnvelopeError, parse

SAFETY_S = 60.0          # every wait below is a safety net, never a measurement


def mosquitto_binary() -> str:
    """The mosquitto executable; fails under CI and skips elsewhere when it is not installed."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if found is None:
        message = "mosquitto is not installed (./dev test installs it: apt-get install mosquitto)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def wait_until(condition: Callable[[], bool], what: str, timeout: float = SAFETY_S) -> None:
    """Poll ``condition`` until true; a safety net, never a measurement."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout:g} s"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = SAFETY_S, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class Mosquitto:
    """One mosquitto process with its own config; ``extra`` lines are appended to the test config, or
    ``config`` replaces it whole (then it must name ``self.port``, ``self.dir`` and ``self.log`` itself)."""

    def __init__(self, workdir: pathlib.Path, *, extra: str = "", config: str | None = None,
                 port: int | None = None) -> None:
        self.binary = mosquitto_binary()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Started as root, mosquitto would switch to user "mosquitto", who cannot write in our temp dir.
        user = f"user {getpass.getuser()}\n"
        if config is not None:
            self.conf.write_text(user + config)
            return
        # Raised queue limits: the consumer must not be where messages get lost; the edge's outbox is under test.
        self.conf.write_text(user + "\n".join([
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %H:%M:%S",
            extra,
            "",
        ]))

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.port, proc=self.proc)
        except RuntimeError as e:
            self.kill()
            raise RuntimeError(f"{e}\n{self.log_text()}") from None
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto closes every connection and writes its persistence file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=SAFETY_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=SAFETY_S)

    def close(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def log_text(self) -> str:
        err = b""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr is not None:
            err = self.proc.stderr.read()
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return (text + err.decode(errors="replace"))[-4000:]


class TcpProxy:
    """Forwards 127.0.0.1:port to a target port; ``cut`` black-holes everything until ``restore``."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket | None, list[bool]]] = []   # (client, server, [dead])
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for _, _, dead in self._conns:
                dead[0] = True

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            dead_ones = [c for c in self._conns if c[2][0]]
            self._conns = [c for c in self._conns if not c[2][0]]
        for client, server, _ in dead_ones:
            _close(client, server)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for client, server, _ in conns:
            _close(client, server)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                dead = [self._cut]
                server: socket.socket | None = None
                if not dead[0]:
                    try:
                        server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                        server.settimeout(None)
                    except OSError:
                        client.close()
                        continue
                self._conns.append((client, server, dead))
            threading.Thread(target=self._pipe, args=(client, server, dead), daemon=True).start()
            if server is not None:
                threading.Thread(target=self._pipe, args=(server, client, dead), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket | None, dead: list[bool]) -> None:
        try:
            while data := src.recv(65536):
                if not dead[0] and dst is not None:
                    dst.sendall(data)
        except OSError:
            pass
        if not dead[0]:
            _close(src, dst)


def _close(*socks: socket.socket | None) -> None:
    for s in socks:
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


@dataclass
class Received:
    """What a consumer got: every tracked envelope's key and bytes, in arrival order, and the rest."""

    keys: list[tuple[str, str, int]] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    status: list[bytes] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)


class Consumer:
    """A subscriber with a persistent session on ``reedge/v1/#``, QoS 1, for the whole test."""

    def __init__(self, port: int, *, client_id: str = "test-consumer", host: str = "127.0.0.1",
                 protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
                 topic: str = "reedge/v1/#", tls: ssl.SSLContext | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.received = Received()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topic = topic
        self.protocol = protocol
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  clean_session=None if protocol == mqtt.MQTTv5 else False)
        self.client.reconnect_delay_set(1, 1)
        if tls is not None:
            self.client.tls_set_context(tls)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            self.client.connect(host, port, keepalive=5, clean_start=False, properties=props)
        else:
            self.client.connect(host, port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(SAFETY_S):
            raise RuntimeError("the consumer did not get its SUBACK")

    def _on_connect(self, client: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, rc: object,
                    _p: object) -> None:
        if not flags.session_present:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            try:
                env = parse(message.payload)
            except EnvelopeError as e:
                self.received.bad.append(f"{message.topic}: {e}")
                return
            if env.stream == "status":
                self.received.status.append(bytes(message.payload))
                return
            self.received.keys.append(env.key)
            self.received.payloads.append(bytes(message.payload))

    def last_seqs(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for _, stream, seq in self.received.keys:
                out[stream] = max(seq, out.get(stream, 0))
            return out

    def wait_for(self, expected_last: dict[str, int], timeout: float = SAFETY_S) -> bool:
        """Until every stream has reached its expected last sequence number (safety net: ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.last_seqs()
            if all(got.get(s, 0) >= n for s, n in expected_last.items()):
                return True
            time.sleep(0.05)
        return False

    def verify(self, expected_last: dict[str, int]) -> Verdict:
        with self._lock:
            return verify(zip(self.received.keys, self.received.payloads, strict=True), expected_last)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Verdict:
    """``problems`` is empty when every stream arrived complete and in order; duplicates are counted."""

    problems: list[str]
    received: int
    duplicates: int
    streams: dict[str, int]


def verify(arrivals: Iterable[tuple[tuple[str, str, int], bytes]], expected_last: dict[str, int]) -> Verdict:
    """Per stream, new sequence numbers must arrive as 1, 2, 3, ... up to ``expected_last``, no gap; a
    number seen before is a duplicate and must be byte-identical to its first copy (same boot too)."""
    problems: list[str] = []
    first: dict[tuple[str, int], tuple[str, bytes]] = {}
    nxt: dict[str, int] = {}
    received = duplicates = 0
    for (boot, stream, seq), payload in arrivals:
        received += 1
        want = nxt.get(stream, 1)
        if seq == want:
            nxt[stream] = want + 1
            first[(stream, seq)] = (boot, payload)
        elif seq < want:
            duplicates += 1
            if first[(stream, seq)] != (boot, payload):
                problems.append(f"{stream} #{seq}: a second copy differs from the first")
        else:
            problems.append(f"{stream}: got #{seq} while #{want} was due (gap or disorder)")
            nxt[stream] = seq + 1
    for stream, last in expected_last.items():
        if nxt.get(stream, 1) - 1 != last:
            problems.append(f"{stream}: last in-order #{nxt.get(stream, 1) - 1}, expected #{last}")
    extra = sorted(set(nxt) - set(expected_last))
    if extra:
        problems.append(f"unexpected streams {extra}")
    return Verdict(problems[:20], received, duplicates, {s: n - 1 for s, n in nxt.items()})


# ---- a throw-away PKI (the same openssl commands as deploy/mosquitto/README.md) ----------------------


@dataclass
class Pki:
    """A CA, a server certificate for ``localhost`` and client certificates named by their CN."""

    dir: pathlib.Path
    ca: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    clients: dict[str, tuple[pathlib.Path, pathlib.Path]]   # CN -> (cert, key)


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        message = "openssl is not installed (apt-get install openssl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=SAFETY_S)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")


def make_ca(directory: pathlib.Path, name: str = "ca") -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed CA (P-256): ``(NAME.pem, NAME.key)``."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN=reedge test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_cert(directory: pathlib.Path, ca: tuple[pathlib.Path, pathlib.Path], cn: str, *,
              server_names: tuple[str, ...] = ()) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate signed by ``ca``: a server one when ``server_names`` are given, else a client one."""
    ext = directory / f"{cn}.ext"
    lines = ["basicConstraints=critical,CA:FALSE", "authorityKeyIdentifier=keyid"]
    if server_names:
        lines += ["subjectAltName=" + ",".join(f"DNS:{n}" for n in server_names), "extendedKeyUsage=serverAuth"]
    else:
        lines += ["extendedKeyUsage=clientAuth"]
    ext.write_text("\n".join(lines) + "\n")
    _openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", f"{cn}.key", "-out", f"{cn}.csr", "-subj", f"/CN={cn}", cwd=directory)
    _openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", f"{cn}.pem", "-days", "30", "-extfile", ext.name, cwd=directory)
    return directory / f"{cn}.pem", directory / f"{cn}.key"


def make_pki(directory: pathlib.Path, clients: Iterable[str]) -> Pki:
    ca = make_ca(directory)
    server = make_cert(directory, ca, "server", server_names=("localhost",))
    return Pki(directory, ca[0], server[0], server[1], {cn: make_cert(directory, ca, cn) for cn in clients})
