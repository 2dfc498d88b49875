"""The agent's outbox on a real SQLite file: order, bounds, drop policy, restarts."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox import LastFrame, Outbox, OutboxFull, Priority


def make(tmp_path: Path, max_events: int = 100) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite3", max_events=max_events)


def test_events_come_out_in_insertion_order_and_leave_only_when_removed(tmp_path: Path) -> None:
    outbox = make(tmp_path)
    for index in range(10):
        outbox.put(f"t/{index % 3}", f"e{index}".encode(), Priority.KEEP)
    first = outbox.peek(0, 4)
    assert [entry.payload for entry in first] == [b"e0", b"e1", b"e2", b"e3"]
    rest = outbox.peek(first[-1].id, 100)
    assert [entry.payload for entry in rest] == [f"e{i}".encode() for i in range(4, 10)]
    outbox.remove([entry.id for entry in first])
    assert len(outbox) == 6
    assert outbox.peek(0, 1)[0].payload == b"e4"
    outbox.close()


def test_contents_survive_reopening(tmp_path: Path) -> None:
    outbox = make(tmp_path)
    outbox.put("t", b"kept", Priority.KEEP, LastFrame("10000001", 7, b"digest"))
    outbox.close()
    reopened = make(tmp_path)
    assert len(reopened) == 1
    assert reopened.peek(0, 10)[0].payload == b"kept"
    assert reopened.last_frames() == [LastFrame("10000001", 7, b"digest")]
    reopened.close()


def test_full_outbox_drops_oldest_status_first_then_dead_letters(tmp_path: Path) -> None:
    outbox = make(tmp_path, max_events=100)
    outbox.put("s", b"status-old", Priority.STATUS)
    outbox.put("d", b"dead-old", Priority.DEADLETTER)
    for index in range(97):
        outbox.put("t", f"txn{index}".encode(), Priority.KEEP)
    outbox.put("s", b"status-new", Priority.STATUS)
    assert len(outbox) == 100

    assert outbox.put("t", b"txn-a", Priority.KEEP)  # pushes out status-old
    assert outbox.put("t", b"txn-b", Priority.KEEP)  # then status-new
    assert outbox.put("t", b"txn-c", Priority.KEEP)  # then the dead letter
    payloads = [entry.payload for entry in outbox.peek(0, 200)]
    assert b"status-old" not in payloads
    assert b"status-new" not in payloads
    assert b"dead-old" not in payloads
    counters = outbox.counters()
    assert counters["dropped_status"] == 2
    assert counters["dropped_deadletter"] == 1
    outbox.close()


def test_transactions_are_never_dropped_the_put_is_refused(tmp_path: Path) -> None:
    outbox = make(tmp_path, max_events=100)
    for index in range(100):
        outbox.put("t", f"txn{index}".encode(), Priority.KEEP)
    with pytest.raises(OutboxFull):
        outbox.put("t", b"one too many", Priority.KEEP)
    # A status event arriving now is dropped itself, and the transactions stay.
    assert outbox.put("s", b"status", Priority.STATUS) is False
    payloads = [entry.payload for entry in outbox.peek(0, 200)]
    assert payloads == [f"txn{index}".encode() for index in range(100)]
    assert outbox.counters()["refused_keep"] == 1
    assert outbox.counters()["dropped_status"] == 1
    outbox.close()


def test_refused_put_leaves_the_last_frame_memory_untouched(tmp_path: Path) -> None:
    outbox = make(tmp_path, max_events=100)
    for index in range(100):
        outbox.put("t", b"x", Priority.KEEP, LastFrame("10000001", index, b"d"))
    with pytest.raises(OutboxFull):
        outbox.put("t", b"y", Priority.KEEP, LastFrame("10000001", 999, b"e"))
    # The frame was not kept, so its resend must not look like a repeat after a restart.
    assert outbox.last_frames() == [LastFrame("10000001", 99, b"d")]
    outbox.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (root mounts it; without root the test says so and skips)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_refuses_the_event_with_its_own_error_and_keeps_the_rest(
    small_disk: Path,
) -> None:
    # SQLite rolls a transaction back itself when a write finds the disk full; the outbox
    # must not try again and hide the real error ("cannot rollback - no transaction is
    # active", found with a full disk under a running agent, issue #17).
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * 256 * 1024)  # something else on the disk, removed later
    outbox = Outbox(small_disk / "outbox.sqlite3", max_events=100_000)
    payload = b"x" * 4096
    stored = 0
    with pytest.raises(sqlite3.OperationalError) as refused:
        for n in range(1000):
            outbox.put(f"t/{n}", payload, Priority.KEEP)
            stored += 1
    assert "full" in str(refused.value) and "rollback" not in str(refused.value)
    assert 0 < stored < 1000
    assert [entry.topic for entry in outbox.peek(0, 2000)] == [f"t/{n}" for n in range(stored)]

    # Room again (the other file removed), the publisher sends and removes half: the
    # outbox goes on.
    ballast.unlink()
    entries = outbox.peek(0, stored // 2)
    outbox.remove([entry.id for entry in entries])
    outbox.put("after", b"small", Priority.KEEP)
    topics = [entry.topic for entry in outbox.peek(0, 2000)]
    assert topics == [f"t/{n}" for n in range(stored // 2, stored)] + ["after"]
    outbox.close()
