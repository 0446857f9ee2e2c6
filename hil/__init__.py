"""Hardware-in-the-loop: plant models, the virtual rig and its register file."""
