"""The files docs/deploy.md hands to IT: the systemd unit passes `systemd-analyze verify`, and
the example configuration is one a node starts from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .need import executable

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
TELECONSULT = str(Path(sys.executable).parent / "teleconsult")
INSTALLED = "/opt/teleconsult/.venv/bin/teleconsult"


def verify(unit: Path) -> tuple[int, str]:
    done = subprocess.run(
        [executable("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Only what concerns this unit: the machine's own units may have complaints of their own.
    said = [line for line in done.stderr.splitlines() if unit.name in line]
    return done.returncode, "\n".join(said)


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    text = (DEPLOY / "teleconsult.service").read_text()
    assert INSTALLED in text
    unit = tmp_path / "teleconsult.service"
    # Where this checkout's teleconsult is, for the check that ExecStart can run.
    unit.write_text(text.replace(INSTALLED, TELECONSULT))
    assert verify(unit) == (0, "")
    # The check itself catches a mistake (so a pass above means something).
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert "restart specifier" in verify(broken)[1]


def test_the_example_configuration_is_read_as_written(tmp_path: Path) -> None:
    done = subprocess.run(
        [TELECONSULT, "config", "--config", str(DEPLOY / "teleconsult.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    shown = dict(
        line.split(" = ", 1) for line in done.stdout.splitlines() if not line.startswith("#")
    )
    assert shown["port"] == "443" and shown["media_port"] == "40000"
    assert shown["tls_cert"] == '"/etc/ssl/teleconsult/fullchain.pem"'
    assert shown["media_tcp_port"] == "40000" and shown["retention_days"] == "90.0"
