# Boot entry of the sensor node: everything lives in node.py (compiled to node.mpy when flashed).
# Ctrl-C or the edge's ENTER_REPL frame leaves the node at the REPL with every output safe;
# any other error is printed and the board resets after 2 s, so a bug cannot leave it dead.

import sys
import time

import machine
import node

try:
    node.main()
except KeyboardInterrupt:
    raise
except Exception as e:
    sys.print_exception(e)
    time.sleep_ms(2000)
    machine.reset()
