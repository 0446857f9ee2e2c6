"""Process control: recipes, the setpoint programmer, PID loops, alarms and the sequencers.

Everything here is plain Python driven by ``step(now_s, ...)`` calls, like a PLC scan:
nothing sleeps and nothing talks to hardware. The controller (``edge.control.controller``)
reads the core, steps these objects and asks the core for outputs; the core's gate has
the last word. Interlocks protect; what is here runs the process and informs.
"""
