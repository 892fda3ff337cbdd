"""The soak bench, one minute of it: every frame to every viewer, recording and drawing on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_one_minute_of_a_whole_session_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak.run", "--minutes", "1", "--subscribers", "2",
         "--size", "640x360", "--bitrate", "800000", "--out", str(out)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    (minute,) = report["minutes"]
    assert minute["sent"] >= 29 * 60  # 30 fps for the whole minute
    assert all(abs(got - minute["sent"]) <= 2 for got in minute["received"])
    assert all(abs(got - 3000) <= 5 for got in minute["audio"])  # 50 Opus packets a second
    assert report["annotator"]["acked"] >= 290 and report["annotator"]["errors"] == 0
    assert {name.split("-", 1)[1] for name, size in report["recorded_files"] if size > 0} == {
        "camera-replay.webm",
        "microphone-replay.webm",
    }
