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

import pytest
from typer.testing import CliRunner

from simulators import cli, demo, scenario, score

POSMON = Path(sys.executable).parent / "posmon"


def test_demo_runs_the_whole_system_and_ends_with_the_summary(tmp_path: Path) -> None:
    # The shortest run its --help allows, output to a file (a pipe): every fault of every
    # kind shown, the decline spike included, and the targets met.
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [str(POSMON), "demo", "--minutes", "0.5", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "injected faults against the collector's alerts" in out
    assert "Not a production set-up" in out.split("posmon demo", 2)[1]  # in the header
    assert "targets (all detected, >= 95% causes right, no false alert): PASS" in out
    report = json.loads((workdir / "report.json").read_text())
    assert report["recall"] == 1.0 and report["false_alerts"] == 0
    assert report["expected"] > 20
    assert report["by_type"]["DECLINE_SPIKE"]["detected"] == 1
    assert report["unshowable"] == []
    # The live view's last frame and the summary each start on a line of their own.
    assert not [line for line in out.splitlines() if "╯" in line and line.rstrip()[-1] != "╯"]
    # Case SLA breaches (nobody works the cases; the clock runs thousands of times fast)
    # are counted with the cases, not among the open alerts.
    last_frame = out[out.rindex("posmon demo") : out.index("injected faults against")]
    assert "past SLA" in last_frame
    assert "CASE_SLA_BREACHED │" not in last_frame.split("re-remittance cases")[0]
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
    assert ": FAIL" not in out  # an early stop is not judged: exit 0, and the summary says so
    assert "files:" in out
    again = json.loads((workdir / "report.json").read_text())
    assert again["expected"] < report["expected"], "the second run's own faults, not the first's"
    assert again["false_alerts"] == 0


def test_the_demo_exits_1_when_its_targets_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run whose score misses a target (here: one fault not detected) ends with FAIL in
    # its summary and exit status 1, so a script or CI running the demo sees it.
    def run(self: scenario.ScenarioRun) -> scenario.RunFiles:
        self.files = scenario.RunFiles.fresh(self.folder)
        return self.files

    missed = score.score(
        [{"kind": "FAILED", "cause": "ACCOUNT_INFO", "tid": "10000001", "rrn": "1"}], [], [],
        scale=3600,
    )  # fmt: skip
    outputs = demo.Outputs(tmp_path, tmp_path / "a", tmp_path / "f", tmp_path / "r", [])
    monkeypatch.setattr(scenario.ScenarioRun, "run", run)
    monkeypatch.setattr(cli, "score_run", lambda files, scale, run: missed)
    monkeypatch.setattr(demo, "write_outputs", lambda run, result: outputs)
    result = CliRunner().invoke(
        cli.demo_app, ["--broker", "mqtt://127.0.0.1:1", "--workdir", str(tmp_path / "d")]
    )
    assert "targets (all detected, >= 95% causes right, no false alert): FAIL" in result.output
    assert result.exit_code == 1
