"""`python -m teleconsult.worker`: one media worker process, started by the server."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import signal
import socket
import sys

from teleconsult.media.aioice_ports import open_media_ports, use_media_ports, use_node_port
from teleconsult.media.ipc import Channel, serve
from teleconsult.media.sfu import Sfu, gather_on
from teleconsult.signaling.logs import configure_logging

PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    """Forward the media the server places here until the server goes."""
    parser = argparse.ArgumentParser(prog="teleconsult.worker")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the server")
    parser.add_argument("--announce", default=None)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--loudest", type=int, default=3, help="voices each listener hears")
    parser.add_argument("--media-port", type=int, default=None, help="UDP port of all media")
    parser.add_argument("--media-tcp-port", type=int, default=None, help="TCP port for ICE-TCP")
    parser.add_argument("--index", type=int, default=0, help="which of the node's workers")
    parser.add_argument("--hand-fd", type=int, default=None, help="the node port's socket pair")
    parser.add_argument(
        "--media-socket",
        action="append",
        default=[],
        metavar="ADDRESS=FD",
        help="the server's socket on the media port, on one address",
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    # The server stops its workers; a worker outliving a killed server would hold its ports.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the server's to handle
    sock = socket.socket(fileno=args.fd)
    if args.hand_fd is not None:
        sockets = {}
        for item in args.media_socket:
            address, fd = item.rsplit("=", 1)
            sockets[address] = socket.socket(fileno=int(fd))
        use_node_port(args.index, sockets, socket.socket(fileno=args.hand_fd))
    asyncio.run(_run(sock, args.announce, args.loudest, args.media_port, args.media_tcp_port))
    return 0


async def _run(
    sock: socket.socket,
    announce: str | None,
    loudest: int,
    media_port: int | None,
    media_tcp_port: int | None,
) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    sfu = Sfu(announce=gather_on(announce), loudest=loudest)
    use_media_ports(media_port, media_tcp_port)
    await open_media_ports()
    await serve(sfu, Channel(reader, writer))


if __name__ == "__main__":
    sys.exit(main())
