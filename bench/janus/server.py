"""Start Debian's Janus (VideoRoom plugin, WebSocket API) on 127.0.0.1, for side-by-side runs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBDIR = Path("/usr/lib/x86_64-linux-gnu/janus")

# Janus 1.x configuration in its own format (libconfig); only what differs from the defaults.
MAIN = """general: {{
    configs_folder = "{folder}"
    plugins_folder = "{lib}/plugins"
    transports_folder = "{lib}/transports"
    events_folder = "{lib}/events"
    loggers_folder = "{lib}/loggers"
    debug_level = 3
    session_timeout = 0
}}
media: {{
    rtp_port_range = "{rtp}"
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "lo"
}}
plugins: {{
    disable = "{plugins}"
}}
transports: {{
    disable = "{transports}"
}}
events: {{
    broadcast = false
}}
"""
WEBSOCKETS = """general: {{
    json = "plain"
    ws = true
    ws_port = {port}
    ws_ip = "127.0.0.1"
    wss = false
}}
admin: {{
    admin_ws = false
    admin_wss = false
}}
"""
VIDEOROOM = """general: {
}
"""


def janus_binary() -> str:
    """Return the janus executable, or stop with how to get it."""
    path = shutil.which("janus")
    if path is None or not LIBDIR.is_dir():
        raise SystemExit("janus is needed for this comparison: ./scripts/bootstrap bench")
    return path


def build_shim(folder: Path) -> Path:
    """Compile the LD_PRELOAD library that lets libnice use the loopback interface."""
    out = folder / "noloopback.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(HERE / "noloopback.c"), "-ldl"],
        check=True,
    )
    return out


def others(kind: str, keep: str) -> str:
    """Every library of a kind but the one kept, as Janus's disable list."""
    names = sorted(p.name for p in (LIBDIR / kind).glob("libjanus_*.so"))
    return ",".join(n for n in names if n != keep)


def start_janus(folder: Path, port: int, rtp: str = "40000-40999") -> subprocess.Popen[bytes]:
    """Start Janus with a WebSocket API on 127.0.0.1:port; returns once it accepts connections."""
    binary = janus_binary()
    folder.mkdir(parents=True, exist_ok=True)
    shim = build_shim(folder)
    (folder / "janus.jcfg").write_text(
        MAIN.format(
            folder=folder,
            lib=LIBDIR,
            rtp=rtp,
            plugins=others("plugins", "libjanus_videoroom.so"),
            transports=others("transports", "libjanus_websockets.so"),
        )
    )
    (folder / "janus.transport.websockets.jcfg").write_text(WEBSOCKETS.format(port=port))
    (folder / "janus.plugin.videoroom.jcfg").write_text(VIDEOROOM)
    log = (folder / "janus.log").open("ab")
    proc = subprocess.Popen(
        [
            binary,
            "-F",
            str(folder),
            "-C",
            str(folder / "janus.jcfg"),
            "-N",
            "-L",
            str(folder / "janus.out"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"LD_PRELOAD": str(shim), "PATH": "/usr/bin:/bin"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"janus exited with {proc.returncode}; see {folder / 'janus.out'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("janus")
