"""reeproduce-edge: the edge controller of a rare-earth magnet recycling line."""

__version__ = "0.1.0"
