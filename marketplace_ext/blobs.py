"""Content-addressed blob store: bundles, models and outputs under ``var/blobs`` by sha256.

Writes go to a temporary file and are renamed into place, so a blob is either whole or absent;
writing the same content twice is a no-op (it only refreshes the blob's mtime, which the orphan
collector reads as "in use"). An upload is *staged* first (:meth:`BlobStore.stage`: written and
fsynced under a temporary name, off the event loop) and *committed* (:meth:`Staged.commit`: a
rename) only once the request is authorized, inside the transaction that records it. Orphans
(a blob no row refers to: a rolled-back transaction, a crash between rename and commit) are
collected by :mod:`marketplace_ext.blob_gc` after a grace period.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import NotFound

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: prefix of a blob being written or staged (not yet content-addressed)
INCOMING_PREFIX = ".incoming-"


class Staged:
    """A blob written under a temporary name in the store's directory: :meth:`commit` renames
    it into place, :meth:`discard` removes it (a no-op after a commit)."""

    def __init__(self, store: BlobStore, tmp: Path, sha256: str, size: int):
        self.store, self.tmp, self.sha256, self.size = store, tmp, sha256, size
        self.committed = False

    def commit(self) -> str:
        """Move the staged file into the store (atomic rename); returns its sha256."""
        target = self.store.path(self.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, target)  # the same content either way: replacing is harmless
        self.committed = True
        return self.sha256

    def discard(self) -> None:
        if not self.committed:
            self.tmp.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:]

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if self._touch(target):
            return digest
        staged = self.stage(data)
        try:
            staged.commit()
        finally:
            staged.discard()
        return digest

    def stage(self, data: bytes) -> Staged:
        """Write ``data`` under a temporary name in the store (fsynced; blocking: call it in
        an executor); nothing is addressable until :meth:`Staged.commit`."""
        digest = hashlib.sha256(data).hexdigest()
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=INCOMING_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Staged(self, Path(tmp), digest, len(data))

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as e:
            raise NotFound(f"blob {sha256} is missing from the store", "sha256") from e

    def open(self, sha256: str) -> BinaryIO:
        """The blob opened for reading (blocking: call it in an executor), to read it in pieces
        rather than whole (downloads stream it)."""
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError as e:
            raise NotFound(f"blob {sha256} is missing from the store", "sha256") from e

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def delete(self, sha256: str) -> bool:
        """Remove a blob (the orphan collector's); returns whether it was there."""
        try:
            self.path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    def entries(self) -> Iterator[tuple[str, float, int]]:
        """Every stored blob as (sha256, mtime, size); files that are not blobs are skipped."""
        if not self.root.is_dir():
            return
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for f in sub.iterdir():
                digest = sub.name + f.name
                if not SHA256_RE.match(digest):
                    continue
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                yield digest, st.st_mtime, st.st_size

    def incoming(self) -> Iterator[tuple[Path, float]]:
        """Temporary files of writes and stages (left behind by a crash, or in flight)."""
        if not self.root.is_dir():
            return
        for f in [*self.root.glob(INCOMING_PREFIX + "*"),
                  *self.root.glob("??/" + INCOMING_PREFIX + "*")]:
            try:
                yield f, f.stat().st_mtime
            except FileNotFoundError:
                continue

    @staticmethod
    def _touch(target: Path) -> bool:
        """Refresh an existing blob's mtime (so the collector's grace period restarts for a
        blob about to be referenced again); False if it does not exist."""
        try:
            now = time.time()
            os.utime(target, (now, now))
            return True
        except FileNotFoundError:
            return False
