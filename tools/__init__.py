"""Developer and installer tools: the `wattmesh` command, flashing, provisioning, benchmarks, demo."""
