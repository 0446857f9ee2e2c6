"""A station's publishing side in a child process, for the tests that kill it with SIGKILL.

``python -m tests.mqtt_worker --outbox PATH --broker URL --boot ID --count N [--linger]``

Puts ``count`` messages through an ``MqttSession`` (streams in turn: telemetry, event, state,
batch) and prints ``P stream seq`` after each put has returned, so every printed message is on
disk. Then prints ``DONE``; with ``--linger`` it waits to be killed, otherwise it stops the session
(flushing) and prints ``STOP flushed remaining``, exiting 0 only if everything was acknowledged.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from edge.spec.broker import BrokerSettings, parse_broker_list
from edge.telemetry.outbox import Outbox
from edge.telemetry.session import MqttSession

STREAMS = ("telemetry", "event", "state", "batch")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outbox", required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--boot", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--interval", type=float, default=0.002)
    ap.add_argument("--linger", action="store_true")
    ap.add_argument("--flush-timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    outbox = Outbox(args.outbox, boot_id=args.boot, synchronous="NORMAL")   # a kill, not a power cut
    settings = BrokerSettings(parse_broker_list(args.broker), client_id="reedge-test-worker", keepalive_s=2,
                              connect_timeout_s=2, backoff_min_s=0.05, backoff_max_s=0.5)
    session = MqttSession(outbox, settings, site="pilot", station="hd-01").start()
    for i in range(args.count):
        stream = STREAMS[i % len(STREAMS)]
        msg = session.put(stream, {"i": i, "boot": args.boot})
        print(f"P {msg.stream} {msg.seq}", flush=True)
        time.sleep(args.interval)
    print("DONE", flush=True)
    if args.linger:
        threading.Event().wait()
    result = session.stop(args.flush_timeout)
    outbox.close()
    print(f"STOP {result.flushed} {result.remaining}", flush=True)
    return 0 if result.flushed else 3


if __name__ == "__main__":
    sys.exit(main())
