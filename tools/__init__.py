"""Developer and installer tools: the wattmesh command, flashing, provisioning, bench, demo."""
