"""Run the server for a benchmark, with teleconsult's SFU or the MediaRelay alternative.

Usage: python -m bench.media.relay_server {teleconsult|mediarelay} PORT SECRET DATA_DIR
       [REDIS_URL NODE]   (a member of a cluster)
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from teleconsult.app import create_app
from teleconsult.media.aiortc_codecs import count_codecs
from teleconsult.signaling.config import Secrets, Settings

from .mediarelay_sfu import MediaRelaySfu


def main() -> None:
    mode, port, secret, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    count_codecs()
    redis, node = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else (None, None)
    settings = Settings(
        port=port,
        data_dir=data_dir,
        announce="127.0.0.1",
        rate=1000,
        burst=1000,
        turn_port=0,
        max_participants=200,  # the viewers scenario goes past a room's default 50
        redis=redis,
        node=node,
        # MediaRelay replaces the SFU of the server's own process.
        media_workers=0 if mode == "mediarelay" else Settings().media_workers,
    )
    app = create_app(settings, Secrets(secret, "bench-admin-key"))
    if mode == "mediarelay":
        app.state.hub.sfu = MediaRelaySfu()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", ws_ping_interval=None)


if __name__ == "__main__":
    main()
