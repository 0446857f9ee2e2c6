"""A broker inside the process, on loopback, for ``reedge demo`` on a machine without one.

amqtt (pure Python, asyncio) runs on its own event loop in a daemon thread, bound to 127.0.0.1 on
a port the kernel chooses (no collision with a system mosquitto on 1883), anonymous, nothing on
disk. ``reedge run`` never starts one: a production station that silently published into a broker
nobody reads would look healthy while every message went nowhere; the caller must ask for it.

What amqtt 0.12.1 is (measured with ``tests/test_mqtt_session.py``): MQTT 3.1.1 only. It answers a
plain MQTT 5 CONNECT with CONNACK "unacceptable protocol version", but one that carries a Will
(the session's always does) it misreads and then neither answers nor closes; the session's
``auto`` protocol falls back to 3.1.1 after its CONNACK timeout (tested there), and ``settings()``
here asks for 3.1.1 from the start. QoS 1 from paho works: every message arrives, in
order, acknowledged. It has no Receive Maximum (3.1.1), so the session uses its 3.1.1 window. It
keeps sessions and retained messages in memory only, so a restart forgets them: fine for a demo,
and the outbox does not rely on the broker anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from edge.spec.broker import BrokerSettings, BrokerUrl

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError"]

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not start (or was used in the wrong state)."""


class EmbeddedBroker:
    """``with EmbeddedBroker() as b: session(b.url)``; ``stop`` closes every connection and the listener."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise EmbeddedBrokerError(f"the embedded broker listens on loopback only, got host {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise EmbeddedBrokerError(f"port must be 0 (any free port) to 65535, got {port!r}")
        self.host = host
        self._want_port = port
        self.port: int | None = None
        self._quiet = quiet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> BrokerUrl:
        if self.port is None:
            raise EmbeddedBrokerError("the embedded broker is not running")
        return BrokerUrl(self.host, self.port, tls=False)

    def settings(self, **overrides: Any) -> BrokerSettings:
        """Session settings for this broker: MQTT 3.1.1 straight away (``auto`` would find out, after
        a CONNACK timeout, since amqtt does not answer an MQTT 5 CONNECT that carries a Will)."""
        return BrokerSettings((self.url,), **{"protocol": "3.1.1", **overrides})

    def start(self) -> EmbeddedBroker:
        """Start and return once the listener accepts connections; ``EmbeddedBrokerError`` if it cannot."""
        if self._thread is not None:
            raise EmbeddedBrokerError("the embedded broker was already started")
        if self._quiet:
            for name in ("amqtt", "transitions"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise EmbeddedBrokerError(f"the embedded broker did not start within {START_TIMEOUT_S:g} s")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT_S)
            raise EmbeddedBrokerError(f"the embedded broker could not start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Shut the broker down and wait for its thread. Idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT_S)
        self.port = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self._want_port}"}},
            # No $SYS publisher, no packet logging: the default plugin set minus the chatter.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start(), which is waiting
            self._error = e
            self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        # imported here: only the demo pays for amqtt's import time (amqtt ships no type information)
        from amqtt.broker import Broker  # type: ignore[import-untyped]

        self._stop = asyncio.Event()
        broker = Broker(self._config())
        await broker.start()
        try:
            server = broker._servers["default"].instance  # private, but the only way to learn a port-0 bind
            sockets = getattr(server, "sockets", None) or ()
            self.port = int(sockets[0].getsockname()[1]) if sockets else self._want_port
            self._ready.set()
            await self._stop.wait()
        finally:
            await broker.shutdown()
