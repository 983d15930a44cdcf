"""The sandbox's first process:
``python -P -m marketplace_ext.sandbox.inside [--relay PORT=SOCKET]... -- COMMAND...``.

Runs inside the namespaces as the sandbox's account. For each relay it listens on
127.0.0.1:PORT (and [::1]:PORT when the loopback has IPv6) and forwards every connection to
SOCKET, the Unix socket the launcher serves outside; the port is the one in ``SPARK_REMOTE``,
so ``sc://localhost:PORT/;token=...`` works unchanged. Then it runs COMMAND as its child and
exits with its status (128 + N when a signal N ended it).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys

from .relay import serve, unix_connector


def _parse(argv: list[str]) -> tuple[list[tuple[int, str]], list[str]]:
    relays, i = [], 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] != "--relay" or i + 1 >= len(argv):
            raise SystemExit(f"inside: unexpected argument {argv[i]!r}\n{__doc__}")
        port, _, path = argv[i + 1].partition("=")
        relays.append((int(port), path))
        i += 2
    command = argv[i + 1:]
    if not command:
        raise SystemExit(f"inside: no command\n{__doc__}")
    return relays, command


def _listen(family: int, host: str, port: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen(64)
    except OSError:
        s.close()
        raise
    return s


def run(relays: list[tuple[int, str]], command: list[str]) -> int:
    for port, path in relays:
        serve(_listen(socket.AF_INET, "127.0.0.1", port), unix_connector(path))
        with contextlib.suppress(OSError):  # no IPv6 on this loopback
            serve(_listen(socket.AF_INET6, "::1", port), unix_connector(path))
    child = subprocess.Popen(command)

    def forward(signum, frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    relays, command = _parse(sys.argv[1:] if argv is None else argv)
    try:
        return run(relays, command)
    except FileNotFoundError as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
