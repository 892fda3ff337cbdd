"""`teleconsult loadtest` against a test server: the table, the plot and the raw data, and the
thresholds failing it when the server stops midway."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2

from teleconsult.client.loadtest import vp8_frame_start

from .conftest import server_process, stop

TELECONSULT = str(Path(sys.executable).parent / "teleconsult")
HOST = "127.0.0.1"


def loadtest(port: int, data: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            TELECONSULT, "loadtest", "--server", f"http://{HOST}:{port}", "--data-dir", str(data),
            "--address", HOST, "--video", "360p", "--out", str(out), *extra,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def connections(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return 0
    found = re.search(r"^teleconsult_connections (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def test_a_load_test_reports_a_table_a_plot_and_every_second(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    with server_process(data, "--media-workers", "2") as (port, _):
        run = loadtest(
            port, data, out, "--publishers", "1", "--viewers", "3", "--duration", "8",
            "--annotations", "20", "--min-delivered", "0.95", "--max-delay-p95", "500",
        )  # fmt: skip
        stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stdout + stderr
    rows = dict(re.findall(r"^(frames delivered|packets lost)\s+(\S+)", stdout, re.M))
    assert float(rows["frames delivered"].rstrip("%")) >= 95, stdout
    assert "loadtest" in stderr  # the progress bar ran
    (png,) = out.glob("loadtest-*.png")
    picture = cv2.imread(str(png))
    assert picture is not None and picture.shape[0] > 400 and picture.shape[1] > 400
    (raw,) = out.glob("loadtest-*.json")
    report = json.loads(raw.read_text())
    seconds = report["seconds"]
    assert [s["t"] for s in seconds] == list(range(1, 9))
    # Three viewers of one 30 fps publisher, and the node's two workers and server measured.
    assert all(s["expected_frames"] == 90 for s in seconds)
    assert sum(s["frames"] for s in seconds[2:]) >= 0.95 * 90 * 6
    assert all(s["cpu"] is not None and s["cpu"] > 0 for s in seconds[1:])
    assert all(s["p95_ms"] is not None and s["p95_ms"] < 500 for s in seconds[2:])
    assert "admin_key" not in raw.read_text()


def test_the_thresholds_fail_it_when_the_server_stops_midway(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    with server_process(data) as (port, server):
        run = loadtest(
            port, data, out, "--publishers", "1", "--viewers", "2", "--duration", "10",
            "--min-delivered", "0.9",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while connections(port) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert connections(port) == 3  # everyone joined
        time.sleep(4)
        stop(server)
        started = time.monotonic()
        stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stdout + stderr
    assert re.search(r"^frames delivered\s+\S+\s+>= 90%\s+FAIL$", stdout, re.M), stdout
    assert "Traceback" not in stderr, stderr[-3000:]
    # The tool finished its planned seconds and left, the server gone, without hanging.
    assert time.monotonic() - started < 40


def test_the_start_of_a_vp8_frame_is_found_behind_its_descriptor() -> None:
    # X, I with a 15-bit picture id, start of partition 0: the frame's data at byte 4.
    assert vp8_frame_start(bytes([0x90, 0x80, 0x81, 0x23, 0x9D, 0x01, 0x2A])) == 4
    assert vp8_frame_start(bytes([0x90, 0x80, 0x12, 0x9D])) == 3  # a 7-bit picture id
    assert vp8_frame_start(bytes([0x10, 0x9D])) == 1  # no extension
    assert vp8_frame_start(bytes([0x00, 0x9D])) is None  # a later packet of the frame
    assert vp8_frame_start(bytes([0x11, 0x9D])) is None  # another partition
    assert vp8_frame_start(bytes([0x90, 0x80])) is None  # cut short


def test_a_room_too_small_for_the_plan_is_said_plainly(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    with server_process(data, "--max-participants", "3") as (port, _):
        run = loadtest(port, data, out, "--viewers", "4", "--duration", "2")
        stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 2, stdout + stderr
    assert "was refused: room_full" in stderr and "--rooms" in stderr, stderr
    assert "Traceback" not in stderr, stderr
