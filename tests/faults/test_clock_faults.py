"""The agent's wall clock stepped +1 h and -1 h under traffic (issue #17; the collector's
own clock is stepped in tests/test_clock_discipline.py).

The agent runs under libfaketime (Debian `faketime`), its wall clock following a file the
test writes while its monotonic clock stays real (`FAKETIME_DONT_FAKE_MONOTONIC`), as when
NTP or an operator steps a box's clock. Its events then carry times an hour off; the
collector, which measures liveness on its own monotonic clock, must raise nothing, and
every frame must be stored once. The terminal sends a heartbeat each second and the
collector's heartbeat timeout is 5 s, so an agent whose status reports stalled on a step
would be caught as TERMINAL_OFFLINE.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import AgentProcess, Broker, Listener
from faultkit import FaultFigures
from test_network_faults import (
    RATE,
    Chain,
    Line,
    finish,
    pty,  # noqa: F401 - a fixture this module uses
    start_line,
)

from simulators.pty import PtyLink

pytestmark = pytest.mark.faults

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def agent_under_faketime(rc: Path) -> type[AgentProcess]:
    class SteppedAgent(AgentProcess):
        def start(self) -> None:
            saved = dict(os.environ)
            os.environ.update(
                LD_PRELOAD=str(FAKETIME),
                FAKETIME_TIMESTAMP_FILE=str(rc),
                FAKETIME_CACHE_DURATION="1",
                FAKETIME_DONT_FAKE_MONOTONIC="1",
            )
            try:
                super().start()
            finally:
                os.environ.clear()
                os.environ.update(saved)

    return SteppedAgent


@pytest.mark.skipif(not FAKETIME.exists(), reason="Debian's faketime is not installed")
@pytest.mark.parametrize("step", ["+1h", "-1h"])
def test_the_agents_clock_stepped_under_traffic(
    stepped: Callable[[Path], Chain], tmp_path: Path, step: str
) -> None:
    rc = tmp_path / "faketime.rc"
    rc.write_text("+0\n")
    count = int(RATE * 25)
    line = stepped(rc)(count=count)
    time.sleep(4)
    rc.write_text(f"{step}\n")
    time.sleep(12)  # more than twice the heartbeat timeout after the step
    during = line.collector.alerts()  # the terminal is still sending
    # The terminal stops at the end of its run: the collector may then rightly call it
    # offline, after the window this test judges.
    figures: FaultFigures = finish(line, f"agent's wall clock stepped {step}", detect_s=None,
                                   recover_s=None, expected_alerts={"TERMINAL_OFFLINE"},
                                   notes=f"alerts while it ran: {len(during)}")  # fmt: skip
    assert during == [], during
    assert figures.stored == count


@pytest.fixture
def stepped(
    tmp_path: Path,
    own_broker: Broker,
    prefix: str,
    pty: PtyLink,  # noqa: F811 - the fixture imported above
    listener_factory: Callable[..., Listener],
) -> Callable[[Path], Chain]:
    """`stepped(rc)(count=...)`: the line, with the agent under libfaketime reading `rc`,
    the terminal beating every second, the collector's heartbeat timeout 5 s."""

    def make(rc: Path) -> Chain:
        def start(*, count: int) -> Line:
            return start_line(
                tmp_path,
                own_broker,
                prefix,
                pty,
                listener_factory,
                agent_port=own_broker.port,
                collector_port=own_broker.port,
                count=count,
                agent_class=agent_under_faketime(rc),
                heartbeat_s=1.0,
                collector_extra="[alerts]\nheartbeat_timeout_s = 5\nsweep_s = 0.2\n",
            )

        return start

    return make
