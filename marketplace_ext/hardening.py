"""The platform's state directory is the platform's alone.

``var/`` holds the databases, the key-encryption key, signing keys, cookie secrets, blobs,
warehouses and environment builds. Users' servers and sandboxed product code run as other
accounts on the same machine, so the modes are the protection (the filesystem contract):

- ``var/`` itself: 0711, owned by the platform's account (others may pass through to a
  directory that belongs to them, not list or read anything);
- every file of the platform's account in it: no group or other bits (secrets 0600);
- every directory of the platform's account: 0700, except the ones above a directory that
  belongs to another account (a unit's Spark server state, a run's work directory): 0711,
  so that account can reach its own directory;
- whatever belongs to another account is that account's business and left alone, and so is
  what lies in a directory of the platform's that is already a passage (0711): the module that
  made it one (the runner's ``var/runs``, the product environments' ``var/envs``, the unit
  servers' ``var/units``) sets the modes inside it deliberately, for the accounts that read
  them.

:func:`harden_var` applies this to what exists; the hub config calls it every time the hub
starts, before any user's server or product run exists. It closes what was created with
default modes (a database, a log, ``blobs/`` made under umask 022). Files the platform creates
later are made private by whoever creates them (``os.open(..., 0o600)``,
``accounts.private_dir``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: the directory modes of the contract
PRIVATE_DIR = 0o700
PASSAGE_DIR = 0o711


def harden_var(var: str | Path, owner: int | None = None) -> list[str]:
    """Apply the filesystem contract to *var* (see the module doc); returns what it changed,
    one line per path, with modes and no content. *owner* is the platform's uid (default: the
    current one)."""
    var = Path(var)
    owner = os.geteuid() if owner is None else owner
    changes: list[str] = []
    st = var.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{var} is not a directory")
    _harden_dir(var, owner, changes)
    # var/ itself is a passage whatever is inside: the hub and the service pass through it,
    # and accounts' directories below may be added at any time
    _chmod(var, st.st_mode, PASSAGE_DIR, changes)
    return changes


def _chmod(path: Path, mode: int, wanted: int, changes: list[str]) -> None:
    if stat.S_IMODE(mode) != wanted:
        os.chmod(path, wanted, follow_symlinks=False)
        changes.append(f"{path}: {stat.S_IMODE(mode):04o} -> {wanted:04o}")


def _harden_dir(path: Path, owner: int, changes: list[str]) -> bool:
    """Harden the platform's directory *path*; True if another account's directory lies
    below it (then *path* must stay passable, 0711)."""
    holds_account_dir = False
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while we walk (a finished run)
                continue
            child = Path(entry.path)
            if stat.S_ISLNK(st.st_mode):
                continue  # a link's own mode means nothing; its target is hardened where it is
            if st.st_uid != owner:
                # an account's own directory or file: not ours to change, but reachable
                holds_account_dir = holds_account_dir or stat.S_ISDIR(st.st_mode)
                continue
            if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == PASSAGE_DIR:
                holds_account_dir = True  # someone's deliberate passage: keep it reachable
            elif stat.S_ISDIR(st.st_mode):
                below = _harden_dir(child, owner, changes)
                _chmod(child, st.st_mode, PASSAGE_DIR if below else PRIVATE_DIR, changes)
                holds_account_dir = holds_account_dir or below
            elif stat.S_ISREG(st.st_mode):
                # keep the owner's bits (a build's executables stay executable for us)
                _chmod(child, st.st_mode, stat.S_IMODE(st.st_mode) & 0o700, changes)
            # sockets and fifos: whoever made them chose who may connect
    return holds_account_dir
