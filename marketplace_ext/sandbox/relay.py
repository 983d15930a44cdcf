"""Byte copying between two stream sockets: both halves of the Spark relay use it.

Outside the sandbox the launcher accepts on a Unix socket and connects to the unit's real
endpoint (TCP); inside, :mod:`marketplace_ext.sandbox.inside` accepts on 127.0.0.1:PORT and
connects to that Unix socket. Nothing is parsed: gRPC (HTTP/2) passes through unchanged.
Plain threads, not asyncio: importing asyncio costs more than the rest of a sandbox's start.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

_CHUNK = 2**16


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _splice(conn: socket.socket, connect: Callable[[], socket.socket]) -> None:
    try:
        other = connect()
    except OSError:  # the client sees the connection close, as without a relay
        conn.close()
        return
    back = threading.Thread(target=_pump, args=(other, conn), daemon=True)
    back.start()
    _pump(conn, other)
    back.join()
    conn.close()
    other.close()


def serve(listener: socket.socket, connect: Callable[[], socket.socket]) -> threading.Thread:
    """Accept on ``listener`` forever (a daemon thread) and splice each connection to a new
    ``connect()``."""

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=_splice, args=(conn, connect), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True, name="relay")
    thread.start()
    return thread


def tcp_connector(host: str, port: int) -> Callable[[], socket.socket]:
    return lambda: socket.create_connection((host, port))


def unix_connector(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise
        return s

    return connect
