"""The MicroPython sensor node, edge side: one package for everything that talks to a node.

* ``link``: the framed wire protocol (COBS, a length and a CRC-32, frames and their payloads); pure, no I/O.
* ``client``: a running station's node: a thread that owns the port, checks the HELLO, injects readings
  into the core and sends the output levels.
* ``session``: one raw-REPL conversation with a node (run Python on it, read and write its files).
* ``hello``: the pico_node firmware's side of flashing: the node.json it reads and its HELLO after a restart.
* ``flash``: ``reedge flash``: build the firmware, copy only what changed, verify by hash, restart, check.
* ``usb``: what is plugged in (``reedge boards list``): USB serial ports, which are nodes, a probe.

The node file itself (``boards/nodes/NAME.toml``) is a spec: ``edge.spec.node``. Imports point one way:
flash -> hello -> session, link; usb -> session; client -> link.
"""
