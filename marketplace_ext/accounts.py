"""System accounts and the platform's private state.

The embedded default runs on one machine, so isolation is by Unix account:

- the hub, the proxy and the marketplace service run as the platform's account (root in the
  embedded default: JupyterHub's ``LocalProcessSpawner`` must be root to start servers as
  other accounts). ``var/`` and every secret in it belong to that account, mode 0700;
- each hub user's notebook server runs as ``jupyter-<name>`` (:func:`user_account`);
- each unit's Spark Connect server runs as ``gds-spark-<unit>`` (:func:`spark_account`);
- product code on a unit's data runs as ``gds-run-<unit>`` (:func:`sandbox_account`), in the
  sandbox (:mod:`marketplace_ext.sandbox`);
- ``gds-unit-<unit>`` is the group of everything that may reach that unit's data platform
  (its members' accounts and its sandbox account).

Accounts are created on demand with ``useradd``/``groupadd --system`` (shadow-utils, on every
Debian machine). Creating accounts needs root; without root every function here raises
:class:`AccountError`, so a non-root deployment must create them beforehand (or use a spawner
that does not need them, such as KubeSpawner).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

#: system account names: at most 32 characters, the portable character set
_ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

_lock = threading.Lock()


class AccountError(RuntimeError):
    """A system account or group could not be looked up or created."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def _check_name(name: str) -> str:
    if not _ACCOUNT_RE.match(name):
        raise AccountError(f"{name!r} is not a valid system account name (at most 32 "
                           "characters: lowercase letters, digits, '_' and '-')")
    return name


def user_account(username: str, prefix: str = "jupyter-") -> str:
    """The system account of hub user *username* (``jupyter-<name>``, as The Littlest
    JupyterHub names them); characters an account name cannot hold become '-'."""
    safe = re.sub(r"[^a-z0-9_-]", "-", username.lower())
    return _check_name((prefix + safe)[:32])


def spark_account(unit: str) -> str:
    return _check_name(f"gds-spark-{unit}"[:32])


def sandbox_account(unit: str) -> str:
    return _check_name(f"gds-run-{unit}"[:32])


def unit_group(unit: str) -> str:
    return _check_name(f"gds-unit-{unit}"[:32])


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AccountError(f"{argv[0]} failed: {e}") from e
    # 9: the name exists already (a concurrent creator won the race): not an error
    if done.returncode not in (0, 9):
        raise AccountError(f"{' '.join(argv)} failed with status {done.returncode}: "
                           f"{done.stderr.strip()}")


def ensure_group(name: str) -> int:
    """The gid of system group *name*, created if missing."""
    _check_name(name)
    with _lock:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
        if os.geteuid() != 0:
            raise AccountError(f"group {name!r} does not exist, and only root can create it")
        _run(["groupadd", "--system", name])
        return grp.getgrnam(name).gr_gid


def ensure_account(name: str, *, home: str | Path | None = None,
                   groups: tuple[str, ...] = (), shell: str = "/usr/sbin/nologin") -> Account:
    """System account *name* (created if missing, with its own group), member of *groups*
    (created if missing). *home*, if given, is created, owned by the account and mode 0700;
    otherwise the account has no home (``/nonexistent``)."""
    _check_name(name)
    for group in groups:
        ensure_group(group)
    with _lock:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            if os.geteuid() != 0:
                raise AccountError(f"account {name!r} does not exist, and only root can "
                                   "create it") from None
            argv = ["useradd", "--system", "--user-group", "--shell", shell,
                    "--home-dir", str(home) if home else "/nonexistent", "--no-create-home"]
            _run([*argv, name])
            entry = pwd.getpwnam(name)
        if groups:
            current = {g.gr_name for g in grp.getgrall() if name in g.gr_mem}
            missing = [g for g in groups if g not in current]
            if missing:
                if os.geteuid() != 0:
                    raise AccountError(f"account {name!r} is not in {missing}")
                _run(["usermod", "--append", "--groups", ",".join(missing), name])
    if home is not None:
        private_dir(home, entry.pw_uid, entry.pw_gid)
    return Account(name, entry.pw_uid, entry.pw_gid, str(home) if home else entry.pw_dir)


def private_dir(path: str | Path, uid: int | None = None, gid: int | None = None,
                mode: int = 0o700) -> Path:
    """Create *path* (and missing parents, as root's) and make it *uid*'s alone."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if uid is not None and os.geteuid() == 0:
        st = path.stat()
        if (st.st_uid, st.st_gid) != (uid, gid if gid is not None else st.st_gid):
            os.chown(path, uid, gid if gid is not None else -1)
    os.chmod(path, mode)
    return path


def traversable_problem(path: str | Path) -> str | None:
    """None if every directory above *path* lets other accounts pass (the other-execute bit),
    else the first one that does not: a server or sandbox running as another account could
    not reach an interpreter there (CI's clean clone may sit under a 0700 home)."""
    path = Path(path).resolve()
    for parent in [*reversed(path.parents), path]:
        try:
            mode = parent.stat().st_mode
        except OSError as e:
            return f"{parent}: {e.strerror}"
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return (f"{parent} is mode {stat.S_IMODE(mode):o}: other accounts cannot reach "
                    f"{path} (chmod o+x {parent}, or install the platform elsewhere)")
    return None
