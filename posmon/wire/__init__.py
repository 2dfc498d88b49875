"""The wire contract as code: MQTT message models and the POSMON-SL/1 serial protocol."""
