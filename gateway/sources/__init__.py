"""Device sources of the gateway: Modbus meters, MQTT nodes and (``ble.py``) BLE nodes."""
