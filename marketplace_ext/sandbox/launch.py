"""The sandbox's outer launcher: ``python -P -m marketplace_ext.sandbox.launch SPEC.json``.

Runs as the caller (root in the service). It reads the spec (:class:`SandboxSpec`), listens on
one Unix socket per relay in ``socket_dir`` (a directory only the sandbox's account can
reach) and forwards each connection to the real endpoint, then runs :func:`bwrap_argv` as its
child and exits with the child's status. The child is started from the main thread: bwrap's
``--die-with-parent`` is tied to the thread that started it, so when this process dies (the
runner kills it) the sandbox dies with it, and with the sandbox's PID namespace every process
in it, double-forked daemons included.

Exit status: the command's (128 + N for a signal N); 125 when the sandbox could not be set up
(the reason on stderr).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys

from .relay import serve, tcp_connector
from .spec import SandboxError, SandboxSpec, bwrap_argv

SETUP_FAILED = 125


def _own(path: str, account: str | None) -> None:
    if account is None or os.geteuid() != 0:
        return
    import pwd

    entry = pwd.getpwnam(account)
    os.lchown(path, entry.pw_uid, entry.pw_gid)


def _serve_relays(spec: SandboxSpec) -> list[socket.socket]:
    listeners: list[socket.socket] = []
    if spec.socket_dir:
        os.makedirs(spec.socket_dir, mode=0o700, exist_ok=True)
        os.chmod(spec.socket_dir, 0o700)
        _own(spec.socket_dir, spec.account)
    for relay in spec.relays:
        path = spec.socket_path(relay)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        _own(path, spec.account)
        serve(listener, tcp_connector(relay.host, relay.target_port))
        listeners.append(listener)
    return listeners


def run(spec: SandboxSpec) -> int:
    argv = bwrap_argv(spec)
    listeners = _serve_relays(spec)
    try:
        child = subprocess.Popen(argv)

        def stop(signum, frame) -> None:
            # the sandbox ends with this process anyway; killing it first avoids a race
            with contextlib.suppress(ProcessLookupError):
                child.kill()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)
        code = child.wait()
    finally:
        for listener in listeners:
            listener.close()
        for relay in spec.relays:
            with contextlib.suppress(OSError, SandboxError):
                os.unlink(spec.socket_path(relay))
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    # an interrupt is the kernel's business (message mode), not the launcher's
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with open(args[0], encoding="utf-8") as f:
            spec = SandboxSpec.from_dict(json.load(f))
        return run(spec)
    except (SandboxError, OSError, ValueError, KeyError) as e:
        print(f"sandbox: cannot start: {e}", file=sys.stderr)
        return SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main())
