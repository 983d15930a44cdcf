"""The certification log: a witnessed, append-only RFC 9162 Merkle log in the service database.

Every certified action appends a canonical JSON statement *in the action's own transaction*
(:func:`append`), so a statement exists exactly when its action committed. Appending only
sequences the entry (a dense index, learnt at once); :meth:`TransparencyLog.integrate` then
adds the new leaves to the stored tree in batches, on a short interval, and signs a checkpoint
(C2SP tlog-checkpoint in a signed note). Witnesses co-sign checkpoints after checking
consistency with the last one they signed; a checkpoint co-signed by ``quorum`` of the
configured witnesses is *final*.

The pure tree, proof and note code is :mod:`marketplace_ext.merkle`.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from . import merkle
from .errors import InvalidField, NotFound
from .orm import LogCheckpoint, LogCosignature, LogEntry, LogNode, LogState

ENTRY_TYPES = (
    "unit_grant", "version_submitted", "shelf", "order", "refund", "download", "query", "run",
    "prediction", "m2d", "fl_contribution", "fl_aggregate",
)


def canonical(statement: Mapping) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def _state(session: Session, lock: bool = False) -> LogState:
    query = select(LogState).where(LogState.id == 1)
    if lock:
        query = query.with_for_update()
    state = session.scalar(query)
    if state is None:
        state = LogState(id=1, next_index=0, tree_size=0)
        session.add(state)
        session.flush()
    return state


def append(session: Session, entry_type: str, actor: str, unit: str | None, subject: str,
           **fields) -> int:
    """Certify a statement in the caller's transaction; returns its log index.

    ``subject`` is the digest (or id) the statement is about; ``fields`` are its references.
    The log-state row is locked until the caller commits, so indices are dense even when a
    transaction rolls back.
    """
    if entry_type not in ENTRY_TYPES:
        raise ValueError(f"unknown log entry type {entry_type!r}")
    state = _state(session, lock=True)
    session.refresh(state)
    index = state.next_index
    statement = {"type": entry_type, "subject": subject, "actor": actor, "unit": unit,
                 "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **fields}
    data = canonical(statement)
    session.add(LogEntry(idx=index, data=data.decode(), kind=entry_type,
                         leaf_hash=merkle.leaf_hash(data).hex()))
    state.next_index = index + 1
    session.flush()
    return index


class SqlNodeStore:
    """:class:`merkle.NodeStore` over the ``log_nodes`` table, in one session."""

    def __init__(self, session: Session):
        self.session = session

    def get_many(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        by_level: dict[int, list[int]] = {}
        for level, idx in dict.fromkeys(keys):
            by_level.setdefault(level, []).append(idx)
        if not by_level:
            return {}
        # one (level = ? AND idx IN (...)) clause per level: each is a primary-key range, which
        # SQLite and PostgreSQL both answer from the index (a row-value IN may scan)
        rows = self.session.execute(
            select(LogNode.level, LogNode.idx, LogNode.hash).where(or_(*(
                and_(LogNode.level == level, LogNode.idx.in_(idxs))
                for level, idxs in by_level.items()))))
        return {(level, idx): bytes.fromhex(h) for level, idx, h in rows}

    def put_many(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        self.session.add_all(LogNode(level=level, idx=idx, hash=h.hex())
                             for level, idx, h in nodes)
        self.session.flush()


@dataclass(frozen=True)
class Witness:
    name: str
    key: merkle.VerifierKey


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class TransparencyLog:
    """The log's identity (origin, signing key), witnesses and the integration step."""

    def __init__(self, origin: str, key_path: Path, witnesses: Mapping[str, str] = (),
                 quorum: int = 0, key_name: str | None = None):
        self.origin = origin
        self.key_name = key_name or origin
        self._private = self._load_or_create_key(Path(key_path))
        self.vkey = merkle.format_vkey(self.key_name, self._private.public_key())
        self.verifier = merkle.parse_vkey(self.vkey)
        self.witnesses = {name: Witness(name, merkle.parse_vkey(vkey))
                          for name, vkey in dict(witnesses).items()}
        self.quorum = quorum

    def _load_or_create_key(self, path: Path):
        if path.exists():
            name, key = merkle.parse_skey(path.read_text().strip())
            return key
        skey, _vkey = merkle.generate_key(self.key_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(skey + "\n")
        return merkle.parse_skey(skey)[1]

    # -- integration -----------------------------------------------------------------------

    def integrate(self, session: Session, max_batch: int = 10_000) -> int | None:
        """Add sequenced entries to the tree and sign a checkpoint; returns the new size, or
        None when there was nothing to do. The caller's session must be a write transaction."""
        state = _state(session, lock=True)
        session.refresh(state)
        if state.next_index == state.tree_size and self._latest(session) is not None:
            return None
        tree = merkle.MerkleTree(SqlNodeStore(session), state.tree_size)
        pending = session.execute(
            select(LogEntry.leaf_hash).where(LogEntry.idx >= state.tree_size)
            .order_by(LogEntry.idx).limit(max_batch)).scalars().all()
        size = tree.append_many(bytes.fromhex(h) for h in pending)
        root = tree.root()
        body = merkle.format_checkpoint(self.origin, size, root)
        note = merkle.sign_note(body, self.key_name, self._private)
        if session.get(LogCheckpoint, size) is None:
            session.add(LogCheckpoint(size=size, root=root.hex(), note=note))
        state.tree_size = size
        session.flush()
        return size

    def _latest(self, session: Session) -> LogCheckpoint | None:
        return session.scalar(select(LogCheckpoint).order_by(LogCheckpoint.size.desc()).limit(1))

    # -- reading ---------------------------------------------------------------------------

    def checkpoint(self, session: Session, size: int | None = None) -> dict:
        """The latest (or a given) checkpoint, with its cosignatures appended to the note."""
        cp = self._latest(session) if size is None else session.get(LogCheckpoint, size)
        if cp is None:
            raise NotFound("the log has no checkpoint yet" if size is None
                           else f"no checkpoint at size {size}", "size")
        cosigs = session.scalars(select(LogCosignature).where(LogCosignature.size == cp.size)
                                 .order_by(LogCosignature.witness)).all()
        note = cp.note
        for c in cosigs:
            note = merkle.add_signature(note, c.line)
        witnessed = [c.witness for c in cosigs]
        return {"origin": self.origin, "size": cp.size, "root": b64(bytes.fromhex(cp.root)),
                "checkpoint": note, "log_key": self.vkey, "witnesses": witnessed,
                "quorum": self.quorum,
                "final": self.quorum > 0 and len(witnessed) >= self.quorum,
                "created_at": cp.created_at.isoformat() + "Z"}

    def entry(self, session: Session, index: int) -> dict:
        row = session.get(LogEntry, index)
        if row is None:
            raise NotFound(f"no log entry {index}", "index")
        return {"index": row.idx, "data": row.data, "leaf_hash": b64(bytes.fromhex(row.leaf_hash)),
                "integrated": row.idx < _state(session).tree_size}

    def _tree(self, session: Session) -> merkle.MerkleTree:
        return merkle.MerkleTree(SqlNodeStore(session), _state(session).tree_size)

    def inclusion(self, session: Session, index: int, size: int) -> dict:
        tree = self._tree(session)
        if size > tree.size:
            raise InvalidField(f"size {size} is beyond the tree ({tree.size})", "size")
        if not 0 <= index < size:
            raise InvalidField(f"index must be within [0, {size})", "index")
        proof = tree.inclusion_proof(index, size)
        return {"index": index, "size": size, "proof": [b64(h) for h in proof]}

    def consistency(self, session: Session, old: int, new: int) -> dict:
        tree = self._tree(session)
        if new > tree.size:
            raise InvalidField(f"new {new} is beyond the tree ({tree.size})", "new")
        if not 0 <= old <= new:
            raise InvalidField(f"old must be within [0, {new}]", "old")
        return {"old": old, "new": new,
                "proof": [b64(h) for h in tree.consistency_proof(old, new)]}

    # -- witnesses -------------------------------------------------------------------------

    def add_cosignature(self, session: Session, note: str) -> dict:
        """Record the cosignatures of configured witnesses found on ``note`` (a checkpoint this
        log signed). Unknown witness keys and bad signatures are refused."""
        if not isinstance(note, str) or not note:
            raise InvalidField("cosignature must be the co-signed checkpoint note", "cosignature")
        text, signatures = merkle.split_note(note)
        checkpoint = merkle.parse_checkpoint(text)
        if checkpoint.origin != self.origin:
            raise InvalidField(f"checkpoint is for origin {checkpoint.origin!r}, not this log",
                               "cosignature")
        stored = session.get(LogCheckpoint, checkpoint.size)
        if stored is None or stored.root != checkpoint.root.hex():
            raise InvalidField("this log never signed that checkpoint", "cosignature")
        keys = [w.key for w in self.witnesses.values()]
        known = {s.name for s in signatures} & set(self.witnesses)
        if not known:
            raise InvalidField("the note carries no cosignature of a configured witness "
                               f"({', '.join(sorted(self.witnesses)) or 'none configured'})",
                               "cosignature")
        opened = merkle.open_note(note, keys)  # raises on any bad signature of a known key
        added = []
        for verified in opened.verified:
            name = verified.key.name
            line = next(s.line() for s in signatures if s.name == name)
            if session.get(LogCosignature, (checkpoint.size, name)) is None:
                session.add(LogCosignature(size=checkpoint.size, witness=name, line=line,
                                           timestamp=verified.timestamp or 0))
                added.append(name)
        session.flush()
        return {"size": checkpoint.size, "added": added,
                **{k: v for k, v in self.checkpoint(session, checkpoint.size).items()
                   if k in ("witnesses", "final")}}

    # -- audit -----------------------------------------------------------------------------

    def fsck(self, session: Session) -> dict:
        return fsck(session)


def fsck(session: Session) -> dict:
    """Recompute the tree from the stored entries and compare every stored node and
    checkpoint; reports the first divergence."""
    state = _state(session)
    frontier = merkle.Frontier()
    expected_index = 0
    stored = SqlNodeStore(session)
    checkpoints = {cp.size: cp.root for cp in session.scalars(select(LogCheckpoint))}
    for row in session.scalars(select(LogEntry).order_by(LogEntry.idx)
                               .execution_options(yield_per=5000)):
        if row.idx != expected_index:
            return {"ok": False, "index": expected_index,
                    "problem": f"entry {expected_index} is missing (next is {row.idx})"}
        leaf = merkle.leaf_hash(row.data.encode())
        if leaf.hex() != row.leaf_hash:
            return {"ok": False, "index": row.idx,
                    "problem": f"entry {row.idx} does not hash to its stored leaf hash"}
        if row.idx < state.tree_size:
            new_nodes = frontier.append(leaf)
            found = stored.get_many([(lv, ix) for lv, ix, _h in new_nodes])
            for level, idx, h in new_nodes:
                if found.get((level, idx)) != h:
                    return {"ok": False, "index": row.idx,
                            "problem": f"stored node ({level}, {idx}) differs from the "
                                       f"entries"}
            root = checkpoints.get(frontier.size)
            if root is not None and root != frontier.root().hex():
                return {"ok": False, "index": row.idx,
                        "problem": f"checkpoint at size {frontier.size} has another root"}
        expected_index += 1
    if expected_index != state.next_index:
        return {"ok": False, "index": expected_index,
                "problem": f"{state.next_index - expected_index} sequenced entries missing"}
    return {"ok": True, "entries": expected_index, "tree_size": state.tree_size}


