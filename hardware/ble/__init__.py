"""BLE for wattmesh nodes without a radio: bumble's virtual controller, a bleak backend on it, and
the plug/node GATT emulator. See README.md."""
