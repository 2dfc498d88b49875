"""The one adapter to paho-mqtt: settings, topics, and a client driven by its owner's loop.

Agent and collector depend on `MqttClient`'s small surface (connect, loop, publish,
subscribe, ack) and never import paho. The client does not start threads of its own: the
owner calls `loop()` and decides when to reconnect, so reconnection follows posmon's
backoff with jitter rather than paho's fixed doubling.

One module per concern:

- `settings`: `MqttSettings` and `TlsSettings`, the `[mqtt]` section of every role;
- `topics`: the contract's topic names under a prefix;
- `backoff`: the reconnect delays;
- `client`: `MqttClient` and the `Message` it hands out, over paho's public API;
- `fastread`: the read path that makes a subscriber fast, the only code that touches
  paho's private internals (listed there, pinned in pyproject, checked by a test).

Only `client` and `fastread` import paho.
"""

from posmon.mqtt.backoff import Backoff
from posmon.mqtt.client import Message, MqttClient, MqttError
from posmon.mqtt.settings import DEFAULT_PREFIX, MqttSettings, Protocol, TlsSettings
from posmon.mqtt.topics import Topics

__all__ = [
    "DEFAULT_PREFIX",
    "Backoff",
    "Message",
    "MqttClient",
    "MqttError",
    "MqttSettings",
    "Protocol",
    "TlsSettings",
    "Topics",
]
