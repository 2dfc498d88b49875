"""posmon: monitoring for card-payment POS terminals, from serial frame to settled money."""

__version__ = "0.1.0"
