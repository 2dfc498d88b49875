"""docs/install-secure.md, run as written: its shell blocks, in order, in one bash.

The page's variables (TRIAL_HOME and the ports) are set to a temporary folder and free
ports; everything else is the page's text. The blocks run up to the check that a
transaction of each terminal reached the collector's database, timed; the test then
reads the database itself, and runs the page's stop block. A block under
`<!-- walkthrough: skip -->` (installing packages) is not run.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulators.broker import free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "install-secure.md"
BLOCK = re.compile(r"(<!-- walkthrough: (\w+) -->\n)?```sh\n(.*?)```", re.DOTALL)
TIDS = {"10000001", "20000001"}


def blocks() -> tuple[list[str], list[str]]:
    """The page's runnable blocks, and its stop blocks."""
    run, stop = [], []
    for match in BLOCK.finditer(DOC.read_text()):
        marker, text = match.group(2), match.group(3)
        if marker == "skip":
            continue
        (stop if marker == "stop" else run).append(text)
    return run, stop


def bash(script: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def leftovers(home: Path) -> None:
    """Kill whatever the page started and its stop block did not stop.

    Only a process whose command line names a file under `home`: a pid left in a file
    may be another program's by now.
    """
    for pid_file in home.glob("*/*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            if str(home) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)


def test_the_page_has_the_blocks_the_test_expects() -> None:
    run, stop = blocks()
    text = "\n".join(run)
    for command in (
        "posmon pki init",
        "posmon pki issue-collector collector-1",
        "posmon broker provision",
        "--tls-only",
        "mosquitto -c",
        "posmon collector run",
        "posmon agent run",
        "posmon simulate terminal",
    ):
        assert command in text, command
    assert "allow_anonymous true" not in text
    assert len(stop) == 1 and "kill" in stop[0]


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (Debian: apt-get install mosquitto)")
    home = tmp_path / "trial"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POSMON_")},
        "PATH": f"{bin_dir}:{Path(mosquitto_binary() or '').parent}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TRIAL_HOME": str(home),
        "TRIAL_MQTT_PORT": str(free_port()),
        "TRIAL_HTTP_PORT": str(free_port()),
    }
    run, stop = blocks()
    started = time.monotonic()
    try:
        done = bash("\n".join(run), env, timeout=180)
        elapsed = time.monotonic() - started
        logs = "\n".join(
            f"--- {path.relative_to(home)}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(home.glob("*/*.log"))
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs
        print(f"\nthe walkthrough took {elapsed:.1f} s to its first transactions")
        with sqlite3.connect(home / "collector" / "posmon.db") as db:
            stored = {row[0] for row in db.execute("SELECT DISTINCT tid FROM transactions")}
            agents = {row[0] for row in db.execute("SELECT DISTINCT agent_id FROM transactions")}
        assert stored == TIDS, logs
        assert agents == {"shop-1", "shop-2"}
        assert "collector-1" in done.stdout  # the status the page shows
        broker_log = (home / "broker" / "mosquitto.log").read_text()
        for login in ("collector-1", "collector-1-alerts", "shop-1", "shop-2"):
            assert f"u'{login}'" in broker_log, login  # each its certificate's name
        assert "already connected, closing old connection" not in broker_log
        stopped = bash("\n".join(stop), env, timeout=30)
        assert stopped.returncode == 0, stopped.stderr
    finally:
        leftovers(home)
