"""How a role's long-running process starts and stops, the same for every role.

Its configuration or a clean exit (status 2, the problem on stderr), and an event set by
SIGTERM or SIGINT. The roles' services and command modules import this, never the
`posmon` command itself (`posmon.cli`), which imports them.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from posmon.config import ConfigError, Settings, load


def load_config_or_exit(model: type[Settings], path: Path | None) -> Settings:
    """Load a role's configuration, or exit 2 with the file (or variable), key and problem."""
    try:
        return load(model, path)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C): how a long-running command is ended."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop
