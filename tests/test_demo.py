"""The README's main job: `posmon demo`, run briefly from the command line as a user runs
it (embedded broker, nothing else started), then again in the same folder and ended with
Ctrl-C, which still gives the summary."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

POSMON = Path(sys.executable).parent / "posmon"


def test_demo_runs_the_whole_system_and_ends_with_the_summary(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [str(POSMON), "demo", "--terminals", "6", "--minutes", "0.8", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "injected faults against the collector's alerts" in out
    assert "targets (all detected, >= 95% causes right, no false alert): PASS" in out
    report = json.loads((workdir / "report.json").read_text())
    assert report["recall"] == 1.0 and report["false_alerts"] == 0
    assert report["expected"] > 50
    alerts = (workdir / "alerts.jsonl").read_text().splitlines()
    assert len(alerts) >= report["detected"]
    assert {json.loads(line)["schema"] for line in alerts} == {"posmon.alert/1"}
    pdfs = sorted((workdir / "evidence").glob("C-*.pdf"))
    assert pdfs and all(pdf.read_bytes().startswith(b"%PDF") for pdf in pdfs)
    rows = (workdir / "faults.csv").read_text().splitlines()
    assert rows[0].startswith("alert,key,injected_cause,detected,found_cause")
    assert len(rows) == report["expected"] + 1

    # Again in the same folder, ended early with Ctrl-C: a fresh start, then the summary.
    process = subprocess.Popen(
        [str(POSMON), "demo", "--terminals", "4", "--minutes", "1", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(20)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    assert "stopped early (Ctrl-C)" in out
    assert "files:" in out
    again = json.loads((workdir / "report.json").read_text())
    assert again["expected"] < report["expected"], "the second run's own faults, not the first's"
    assert again["false_alerts"] == 0
