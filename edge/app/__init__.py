"""The application: the `reedge` CLI, the station run loop, provisioning. Wires the layers below; nothing imports it."""
