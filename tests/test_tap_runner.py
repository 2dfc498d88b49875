"""A `[[taps]]` section as a technician writes it, and the taps it runs over real TCP."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import Field

from agent.tap.codec import encode
from agent.tap.config import TapSection
from agent.tap.pairing import Event
from agent.tap.runner import Taps
from agent.tap.spec import CUP_POS_PATH, cup_pos
from posmon.config import ConfigError, RoleSettings, load
from posmon.wire.models import StatusEvent, TxnEvent

WAIT_S = 30.0
SPEC = cup_pos()


class TapsOnly(RoleSettings):
    """The part of the agent's configuration this file is about."""

    taps: list[TapSection] = Field(default_factory=list)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_tap_section_loads_with_its_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[taps]]\nname = "counter-1"\nlisten = "0.0.0.0:5000"\nupstream = "10.1.2.3:6000"\n',
    )
    (tap,) = load(TapsOnly, path).taps
    assert (tap.listen, tap.upstream, tap.spec, tap.tid) == (
        "0.0.0.0:5000",
        "10.1.2.3:6000",
        None,
        None,
    )
    assert tap.load_spec().name == "cup-pos"


def test_config_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[taps]]\nname = "a"\nlisten = "5000"\nupstream = "h:6000"\nlisen = "x"\n',
    )
    with pytest.raises(ConfigError) as error:
        load(TapsOnly, path)
    message = str(error.value)
    assert f"{path}: taps.0.listen: Value error, '5000' is not host:port" in message
    assert f"{path}: taps.0.lisen: unknown key" in message


def test_a_spec_file_that_does_not_load_is_named_with_its_key(tmp_path: Path) -> None:
    spec = tmp_path / "variant.toml"
    text = CUP_POS_PATH.read_text(encoding="utf-8").replace("tpdu_bytes = 5", "tpdu_bytes = 99")
    spec.write_text(text, encoding="utf-8")
    path = write(
        tmp_path,
        f'[[taps]]\nname = "a"\nlisten = "127.0.0.1:5000"\nupstream = "h:6000"\nspec = "{spec}"\n',
    )
    with pytest.raises(ConfigError) as error:
        load(TapsOnly, path)
    assert f"{path}: taps.0.spec: Value error, {spec}: framing.tpdu_bytes:" in str(error.value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_configured_taps_relay_and_hand_their_events_to_the_sink() -> None:
    sale = encode(
        "0200",
        {
            "2": "6222021234567890123",
            "3": "000000",
            "4": "000000012800",
            "11": "000017",
            "41": "10000001",
            "42": "898100012340001",
            "60": "22000042000",
        },
        SPEC,
        tpdu="6000030000",
        header="603100000000",
    )
    approval = encode(
        "0210",
        {
            "11": "000017",
            "37": "402511000017",
            "39": "00",
            "41": "10000001",
            "42": "898100012340001",
        },
        SPEC,
        tpdu="6000000003",
        header="603100000000",
    )
    front = socket.create_server(("127.0.0.1", 0))
    front.settimeout(WAIT_S)

    def answer() -> None:
        conn, _ = front.accept()
        with conn:
            conn.settimeout(WAIT_S)
            got = b""
            while len(got) < len(sale):
                got += conn.recv(65536)
            conn.sendall(approval)
            conn.recv(1)

    threading.Thread(target=answer, daemon=True).start()
    got: list[tuple[str, Event]] = []
    section = TapSection(
        name="counter-1",
        listen=f"127.0.0.1:{free_port()}",
        upstream=f"127.0.0.1:{front.getsockname()[1]}",
    )
    taps = Taps(
        [section],
        agent_id="agent-1",
        tz=ZoneInfo("Asia/Shanghai"),
        currency="CNY",
        sink=lambda name, event: got.append((name, event)),
    )
    taps.start()
    try:
        with socket.create_connection(("127.0.0.1", taps.relays[0].port), timeout=WAIT_S) as sock:
            sock.sendall(sale)
            answered = b""
            while len(answered) < len(approval):
                answered += sock.recv(65536)
        assert answered == approval
        deadline = time.monotonic() + WAIT_S
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        taps.stop()
        front.close()
    assert [(name, type(event)) for name, event in got] == [
        ("counter-1", StatusEvent),
        ("counter-1", TxnEvent),
    ]
    stats = taps.stats()["counter-1"]
    assert (stats["connections"], stats["decoded"], stats["copies_dropped"]) == (1, 2, 0)
