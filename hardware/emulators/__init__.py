"""Emulated hardware for hardware-in-the-loop tests and the demo (Modbus meters, MQTT nodes)."""
