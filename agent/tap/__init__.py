"""ISO 8583 host-link tap: a fail-open TCP relay with a sans-IO decoder beside it."""
