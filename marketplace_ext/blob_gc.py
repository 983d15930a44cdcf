"""Collecting orphan blobs: stored content that no database row refers to.

Uploads are stored only once authorized and inside the transaction that records them, but a
transaction can still roll back after the rename (or the service die between the two), and a
download or export blob is referenced only by a short-lived signed link. Such blobs are
orphans. :func:`collect` deletes those older than a grace period (an upload in flight, a link
not yet expired, are younger), plus temporary files of writes that never finished.

References are found through the ORM's metadata, not a hand-kept list: every text column of
every table (the ``*_sha256`` columns of versions, runs, model-to-data requests, FL projects,
rounds, updates and aggregates, and JSON maps such as runs' ``artifacts``, m2d ``released`` or
versions' ``file_digests``) is scanned for sha256 hex digests. A column added later is covered
without an edit here; a value that merely looks like a digest keeps nothing but its own blob.
The log's tables (Merkle nodes, entries) hold hashes of the log itself and are skipped.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from sqlalchemy import String, select
from sqlalchemy.orm import Session

from .blobs import BlobStore
from .federated import orm as _fl_orm  # noqa: F401  (the FL tables belong to the metadata)
from .orm import Base

log = logging.getLogger(__name__)

DIGEST_RE = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
#: tables whose 64-hex values are not blob references
SKIPPED_PREFIXES = ("log_", "alembic")


@dataclass
class Collection:
    """What one pass found and did."""

    blobs: int = 0  # blobs in the store
    referenced: int = 0  # distinct digests the database refers to
    deleted: list[str] = field(default_factory=list)  # orphan digests removed (or to remove)
    deleted_bytes: int = 0
    kept_young: int = 0  # orphans still inside the grace period
    incoming_removed: int = 0  # stale temporary files removed

    def to_dict(self) -> dict:
        return {"blobs": self.blobs, "referenced": self.referenced,
                "deleted": len(self.deleted), "deleted_bytes": self.deleted_bytes,
                "kept_young": self.kept_young, "incoming_removed": self.incoming_removed}


def referenced_digests(session: Session) -> set[str]:
    """Every sha256 hex digest held in a text column of a non-log table."""
    found: set[str] = set()
    for table in Base.metadata.sorted_tables:
        if table.name.startswith(SKIPPED_PREFIXES):
            continue
        columns = [c for c in table.columns if isinstance(c.type, String)]
        if not columns:
            continue
        for row in session.execute(select(*columns)).yield_per(1000):
            for value in row:
                if isinstance(value, str) and len(value) >= 64:
                    found.update(DIGEST_RE.findall(value))
    return found


def collect(session_factory, blobs: BlobStore, grace_seconds: float, *,
            dry_run: bool = False, now: float | None = None) -> Collection:
    """Delete blobs no row refers to whose mtime is older than ``grace_seconds`` (blocking: run
    it in an executor). The store is listed before the database is read, so a blob written
    meanwhile is young and kept; a candidate is re-checked just before it is deleted (a
    :meth:`BlobStore.put` of the same content refreshes its mtime)."""
    now = time.time() if now is None else now
    cutoff = now - grace_seconds
    result = Collection()
    candidates = []
    for digest, mtime, size in blobs.entries():
        result.blobs += 1
        candidates.append((digest, mtime, size))
    with session_factory() as session:
        referenced = referenced_digests(session)
    result.referenced = len(referenced)
    for digest, mtime, size in candidates:
        if digest in referenced:
            continue
        if mtime > cutoff:
            result.kept_young += 1
            continue
        try:
            if blobs.path(digest).stat().st_mtime > cutoff:  # touched since it was listed
                result.kept_young += 1
                continue
        except FileNotFoundError:
            continue
        if dry_run or blobs.delete(digest):
            result.deleted.append(digest)
            result.deleted_bytes += size
    for path, mtime in blobs.incoming():
        if mtime <= cutoff:
            if not dry_run:
                path.unlink(missing_ok=True)
            result.incoming_removed += 1
    if result.deleted or result.incoming_removed:
        log.info("orphan blobs %s: %s", "found" if dry_run else "collected", result.to_dict())
    return result
