"""The MicroPython sensor node, edge side: link codec, session, HELLO, flashing, USB discovery, the running client."""
