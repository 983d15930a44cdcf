"""A sandbox's directories: made for its account, and read back without trusting them.

The sandboxed code owns its working directory, so anything in it may be a symbolic link (to
``var/marketplace_kek``), a FIFO (a read that never returns) or a huge file by the time the
service reads it as root. :func:`read_inside` therefore opens every component of the path
relative to the directory it trusts, with ``O_NOFOLLOW`` and ``O_NONBLOCK``, and reads only a
regular file, up to a size.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path, PurePosixPath


class UnsafeFile(OSError):
    """The path leaves its root, crosses a link, or is not a regular file."""


def account_ids(account: str | None) -> tuple[int, int] | None:
    """(uid, gid) of ``account``; None for None or when not root (nothing is chowned)."""
    if account is None or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(account)
    return entry.pw_uid, entry.pw_gid


def owned_dir(path: Path, ids: tuple[int, int] | None, mode: int = 0o700) -> Path:
    """Create ``path`` (not its parents) for the account ``ids``."""
    os.mkdir(path, mode)
    if ids is not None:
        os.lchown(path, *ids)
    os.chmod(path, mode)
    return path


def give(path: Path, ids: tuple[int, int] | None) -> None:
    """Hand ``path`` and everything under it to ``ids`` (links themselves, never followed)."""
    if ids is None:
        return
    os.lchown(path, *ids)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), *ids)


def _parts(rel: str) -> tuple[str, ...]:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or "\0" in rel:
        raise UnsafeFile(f"{rel!r} is not a relative path inside the directory")
    return p.parts


def open_inside(root: Path, rel: str) -> int:
    """A read-only descriptor of the regular file ``root/rel``, no component a link; raises
    FileNotFoundError, or :class:`UnsafeFile` (a link, a FIFO, a directory...)."""
    parts = _parts(rel)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in parts[:-1]:
            try:
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except NotADirectoryError:
                raise UnsafeFile(f"{name!r} in {rel!r} is not a directory") from None
            except OSError as e:
                if e.errno == 40:  # ELOOP: a link
                    raise UnsafeFile(f"{name!r} in {rel!r} is a link") from None
                raise
            os.close(fd)
            fd = nxt
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError as e:
            if e.errno == 40:
                raise UnsafeFile(f"{rel!r} is a link") from None
            raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise UnsafeFile(f"{rel!r} is not a regular file")
    return file_fd


def size_inside(root: Path, rel: str) -> int:
    fd = open_inside(root, rel)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_inside(root: Path, rel: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``root/rel`` (see :func:`open_inside`); :class:`UnsafeFile`
    when it holds more than ``max_bytes``."""
    fd = open_inside(root, rel)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise UnsafeFile(f"{rel!r} is {size} bytes; at most {max_bytes} are read")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFile(f"{rel!r} is more than {max_bytes} bytes")
    return data


def try_read_inside(root: Path, rel: str, max_bytes: int) -> bytes | None:
    """:func:`read_inside`, or None when the file is missing or unsafe."""
    with contextlib.suppress(OSError):
        return read_inside(root, rel, max_bytes)
    return None
