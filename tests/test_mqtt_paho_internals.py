"""The paho internals posmon's fast read path depends on are there, in the shape it uses.

`posmon.mqtt.fastread` overrides, calls and reads private names of paho's `Client` for
speed; `PAHO_INTERNALS` lists each with why. This test fails, naming the entry and the
installed paho version, when paho no longer has one of them as used; pyproject pins
paho-mqtt to `PAHO_REQUIREMENT`, the releases it passed on.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from posmon.mqtt.fastread import (
    PAHO_INTERNALS,
    PAHO_REQUIREMENT,
    BufferedPaho,
    PahoInternal,
    _in_packet,
)

ROOT = Path(__file__).resolve().parent.parent
PAHO = f"paho-mqtt {version('paho-mqtt')}"


def _client() -> paho.Client:
    return paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="internals")


@pytest.mark.parametrize("internal", PAHO_INTERNALS, ids=lambda internal: internal.name)
def test_each_paho_internal_posmon_uses_is_there(internal: PahoInternal) -> None:
    where = f"{internal.where}.{internal.name} ({internal.kind}: {internal.why})"
    if internal.kind == "module":
        module = importlib.import_module(internal.where)
        assert hasattr(module, internal.name), f"{PAHO} has no {where}"
        return
    if internal.kind == "attribute":
        client = _client()
        assert hasattr(client, internal.name), f"{PAHO}: a Client has no {where}"
        return
    assert internal.kind in ("override", "method"), internal.kind
    method = inspect.getattr_static(paho.Client, internal.name, None)
    assert callable(method), f"{PAHO}: Client has no method {where}"
    declared = tuple(inspect.signature(method).parameters)[1:]  # after self
    assert declared == internal.parameters, (
        f"{PAHO}: Client.{internal.name}{declared} is not ({', '.join(internal.parameters)}), "
        f"the parameters posmon uses ({internal.why})"
    )
    if internal.kind == "override":
        ours = tuple(inspect.signature(getattr(BufferedPaho, internal.name)).parameters)[1:]
        assert ours == declared, f"BufferedPaho.{internal.name} does not take paho's parameters"


def test_every_private_name_the_fast_path_touches_is_listed() -> None:
    # Any `self._name` in BufferedPaho that is paho's (not one of ours) must be listed.
    source = inspect.getsource(BufferedPaho)
    used = set(re.findall(r"\bself\._([a-z]\w*)", source)) | set(
        re.findall(r"\bsuper\(\)\._([a-z]\w*)", source)
    )
    ours = {name.lstrip("_") for name in vars(BufferedPaho)} | {
        "read_sock",
        "read_buffer",
        "read_pos",
        "read_later",
    }
    listed = {internal.name.lstrip("_") for internal in PAHO_INTERNALS}
    assert used - ours <= listed, f"not in PAHO_INTERNALS: {sorted(used - ours - listed)}"


def test_paho_reads_as_the_fast_path_assumes() -> None:
    """What the overrides rely on beyond the names: how paho's own code uses them."""
    read = inspect.getsource(paho.Client._packet_read)
    # _sock_recv is paho's only read, so a buffer behind it serves every read.
    assert "self._sock_recv(" in read and ".recv(" not in read, (
        f"{PAHO}: _packet_read no longer reads through _sock_recv alone"
    )
    # The state a handler sees, and the keep-alive clock, as _packet_read leaves them.
    assert "self._packet_handle()" in read, f"{PAHO}: _packet_read no longer calls it"
    assert "self._last_bytes_received = time_func()" in read, (
        f"{PAHO}: _packet_read no longer stamps _last_bytes_received with time_func()"
    )
    assert set(_client()._in_packet) == set(_in_packet(0, bytearray())), (
        f"{PAHO}: the keys of Client._in_packet changed"
    )
    receive = inspect.getsource(paho.Client._sock_recv)
    assert "self._sock.recv(bufsize)" in receive, f"{PAHO}: _sock_recv changed"


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_pyproject_pins_paho_to_the_checked_releases() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    pins = {
        extra: line
        for extra, lines in extras.items()
        for line in lines
        if re.match(r"paho-mqtt\b", line)
    }
    assert pins and set(pins.values()) == {PAHO_REQUIREMENT}, (
        f"pyproject: {pins}, checked: {PAHO_REQUIREMENT}"
    )
    lowest, below = re.fullmatch(r"paho-mqtt>=([\d.]+),<([\d.]+)", PAHO_REQUIREMENT).groups()
    installed = _release(version("paho-mqtt"))
    assert _release(lowest) <= installed < _release(below), (
        f"{PAHO} is installed, outside {PAHO_REQUIREMENT}: check PAHO_INTERNALS on it first"
    )


def test_an_older_paho_is_named_as_the_problem_on_import() -> None:
    # fastread's ImportError for a paho without paho.mqtt.exception names the same range.
    from posmon.mqtt import fastread

    assert f"needs {PAHO_REQUIREMENT}," in inspect.getsource(fastread)
