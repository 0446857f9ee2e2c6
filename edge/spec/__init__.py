"""The bottom layer: every file a technician writes, read into frozen, checked types.

Imports nothing else from ``edge``.
"""
