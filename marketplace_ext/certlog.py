"""The certification log: a witnessed, append-only RFC 9162 Merkle log in the service database.

Every certified action appends a canonical JSON statement *in the action's own transaction*
(:func:`append`), so a statement exists exactly when its action committed. Appending only
sequences the entry (a dense index, learnt at once); :meth:`TransparencyLog.integrate` then
adds the new leaves to the stored tree in batches, on a short interval, and signs a checkpoint
(C2SP tlog-checkpoint in a signed note). Witnesses co-sign checkpoints after checking
consistency with the last one they signed; a checkpoint co-signed by ``quorum`` of the
configured witnesses is *final*.

The pure tree, proof and note code is :mod:`marketplace_ext.merkle`.

Private entries
---------------
A leaf hashes only an entry's public part: its type, its time and a salted commitment to its
details (:mod:`marketplace_ext.logentry`). The details (subject, actor, unit, references such
as product, price, supplier) and the salt are stored beside the entry and served only to its
readers (:func:`access`):

- operators;
- the entry's actor (the user who acted; not the service's own :data:`SYSTEM_ACTORS`);
- members of the entry's *party units*, fixed when the entry is appended: the entry's own
  unit, a ``supplier`` it names, the unit owning the ``product`` it names, the buyer and the
  supplier of the ``order`` it names, the demanding and the owning unit of the model-to-data
  ``request`` it names, the initiating unit of the federated project (``project_id``) and, for
  an aggregate, every member unit of that project, and any ``party_units`` the caller adds;
- everyone, once the entry is *disclosed*: the submission of a version that reached the shelf
  and the move onto the shelf are public anyway (the shelf shows them), so buyers can check
  their files against the publisher's entry.

Everyone else reads the public part only, which is enough to check an inclusion proof: that an
entry of that type existed at that index at that time. Checkpoints, proofs and witnesses never
touch the details.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import event, insert, or_, select, update
from sqlalchemy.orm import Session

from . import logentry, merkle
from .driver_sql import DriverSql
from .errors import InvalidField, NotFound
from .log_fsck import fsck
from .log_nodes import BeyondTree, CachedNodeStore, SqlNodeStore, UpperNodeCache
from .orm import (
    LogCheckpoint,
    LogCosignature,
    LogEntry,
    LogState,
    ModelToDataRequest,
    Order,
    Product,
    Unit,
    Version,
)

if TYPE_CHECKING:
    from .auth import Caller

ENTRY_TYPES = (
    "unit_grant", "version_submitted", "shelf", "order", "refund", "download", "query", "run",
    "prediction", "m2d", "fl_contribution", "fl_aggregate", "fl_unit_key",
    "review", "review_hidden", "feature",  # the exchange's ratings and promotion
    "topic",  # the exchange's topic requests: every step, field `step`
    "workshop_award",  # the exchange's competitions: points a host paid a winner
    "derived_model",  # further training: a unit's retrained tool and its lineage (retrain.py)
    "fl_pool", "fl_split", "fl_model_product",  # a federated project's pool, split and model
)

# actors that are the service itself, not hub users: a hub user who happens to be called
# "runner" must not read every run's entry through the actor rule
SYSTEM_ACTORS = frozenset({"runner", "marketplace", "system"})

canonical = logentry.canonical


class _Sequencer:
    """The log's part of one transaction: the locked state row and the entries appended so far
    that are not yet written. Appends in one transaction lock and read the state row once, and
    their rows go to the database in one multi-row insert when the session next flushes (before
    any query, and at commit), instead of one ORM flush per statement."""

    __slots__ = ("transaction", "state", "rows", "product_units")

    def __init__(self, transaction: object, state: LogState):
        self.transaction = transaction
        self.state = state
        self.rows: list[dict] = []
        self.product_units: dict[str, str | None] = {}  # product name -> owning unit's slug


_SEQUENCER = "certlog.sequencer"


def _sequencer(session: Session) -> _Sequencer:
    transaction = session.get_transaction()
    current = session.info.get(_SEQUENCER)
    if current is None or current.transaction is not transaction:
        # a new transaction (an earlier one committed or rolled back: its unwritten rows, if
        # any, belong to a rollback and are dropped with it)
        state = _state(session, lock=True)
        current = session.info[_SEQUENCER] = _Sequencer(transaction, state)
    return current


@event.listens_for(Session, "before_flush")
def _write_sequenced(session: Session, flush_context, instances) -> None:
    current = session.info.get(_SEQUENCER)
    if current is None or not current.rows:
        return
    if current.transaction is not session.get_transaction():
        current.rows.clear()  # appended in a transaction that rolled back
        return
    rows, current.rows = current.rows, []
    session.connection().execute(insert(LogEntry), rows)


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction) -> None:
    # a savepoint rolled back (a failed work of a batch, write_batches.py) after appending
    # entries it had not flushed yet: they go with it, and the next append reads the state row
    # again (the rollback expired the counter it had moved)
    current = session.info.get(_SEQUENCER)
    if current is not None and current.rows and previous_transaction.nested:
        current.rows.clear()
        session.info.pop(_SEQUENCER, None)


def _state(session: Session, lock: bool = False) -> LogState:
    session.flush()  # this transaction's sequenced rows and counter first (a refresh drops them)
    query = select(LogState).where(LogState.id == 1)
    if lock:  # and fresh: the row as this lock sees it, not as the identity map had it
        query = query.with_for_update().execution_options(populate_existing=True)
    state = session.scalar(query)
    if state is None:
        state = LogState(id=1, next_index=0, tree_size=0)
        session.add(state)
        session.flush()
    return state


def append(session: Session, entry_type: str, actor: str, unit: str | None, subject: str,
           *, party_units: Iterable[str] = (), **fields) -> int:
    """Certify a statement in the caller's transaction; returns its log index.

    ``subject`` is the digest (or id) the statement is about; ``fields`` are its references.
    Subject, actor, unit and fields are the entry's private details: the leaf commits to them
    with a fresh salt. ``party_units`` names units that may read the details beyond those the
    fields already name (see the module docstring). The log-state row is locked until the
    caller commits, so indices are dense even when a transaction rolls back.
    """
    if entry_type not in ENTRY_TYPES:
        raise ValueError(f"unknown log entry type {entry_type!r}")
    sequencer = _sequencer(session)
    state = sequencer.state
    index = state.next_index
    details = {"subject": subject, "actor": actor, "unit": unit, **fields}
    with session.no_autoflush:  # the lookups never need this transaction's log rows
        parties = party_units_of(session, entry_type, unit, details, party_units,
                                 sequencer.product_units)
    row = _entry_row(index, entry_type, actor, details, parties)
    sequencer.rows.append(row)
    state.next_index = index + 1  # the state row is dirty: the next flush writes the rows
    if row["disclosed"]:
        _disclose_submission(session, fields.get("product"), fields.get("version"))
    return index


def _entry_row(index: int, entry_type: str, actor: str, details: dict,
               parties: list[str]) -> dict:
    """The ``log_entries`` row of a new entry: its public part commits to the details with a
    fresh salt."""
    raw = canonical(details)
    salt = logentry.new_salt()
    now = datetime.now(UTC)
    time = now.isoformat(timespec="microseconds")[:-6] + "Z"  # as strftime(...%fZ), 3x faster
    data = logentry.public_part(entry_type, time, logentry.commitment(raw, salt))
    return {
        "idx": index, "data": data.decode(), "kind": entry_type,
        "leaf_hash": merkle.leaf_hash(data).hex(), "created_at": now.replace(tzinfo=None),
        "details": raw.decode(), "salt": salt.hex(),
        "actor": None if actor in SYSTEM_ACTORS else actor, "parties": json.dumps(parties),
        "disclosed": entry_type == "shelf" and details.get("to_state") == "on_shelf"}


def append_statements(session: Session, sql: DriverSql, entry_type: str, actor: str,
                      unit: str | None, subject: str, *, parties: list[str],
                      **fields) -> list[tuple[str, tuple]]:
    """:func:`append` as two statements for a caller that writes its own rows through
    :class:`DriverSql` (a purchase, :mod:`marketplace_ext.purchase`), to run in its
    :meth:`DriverSql.batch`: the first takes the index (its row: ``(index,)``; it creates the
    state row for the log's first entry) and locks the state row until the commit, as
    :func:`append` does; the second writes the entry. :data:`TAKEN_INDEX` is the index in
    later statements of the transaction.

    ``parties`` are given, not looked up: the caller has just written the rows they come from.
    They must be what :func:`party_units_of` finds for these details (the tests compare).
    """
    if entry_type not in ENTRY_TYPES or entry_type == "shelf":
        raise ValueError(f"{entry_type!r} entries are appended with certlog.append")
    current = session.info.pop(_SEQUENCER, None)
    if current is not None and current.rows:  # ORM appends of this transaction go first
        session.flush()
    row = _entry_row(-1, entry_type, actor,
                     {"subject": subject, "actor": actor, "unit": unit, **fields}, parties)
    return [
        ("INSERT INTO log_state (id, next_index, tree_size) VALUES (1, 1, 0) "
         "ON CONFLICT (id) DO UPDATE SET next_index = log_state.next_index + 1 "
         "RETURNING next_index - 1", ()),
        ("INSERT INTO log_entries (idx, data, kind, leaf_hash, created_at, details, salt, "
         "actor, parties, disclosed) "
         "SELECT next_index - 1, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM log_state WHERE id = 1",
         (row["data"], row["kind"], row["leaf_hash"], sql.timestamp(row["created_at"]),
          row["details"], row["salt"], row["actor"], row["parties"], row["disclosed"])),
    ]


#: The index this transaction took last, in SQL, while it holds the log's state row (after
#: the statements of :func:`append_statements`).
TAKEN_INDEX = "(SELECT next_index - 1 FROM log_state WHERE id = 1)"


def _disclose_submission(session: Session, product: object, version: object) -> None:
    """A version going on the shelf makes its submission entry public: the shelf shows the
    version anyway, and its buyers verify their files against that entry."""
    index = session.scalar(select(Version.log_index).join(Product, Version.product_id == Product.id)
                           .where(Product.name == product, Version.version == version))
    if index is not None:
        session.execute(update(LogEntry).where(LogEntry.idx == index,
                                               LogEntry.kind == "version_submitted")
                        .values(disclosed=True))


def _slug(session: Session, unit_id: int | None) -> str | None:
    unit = session.get(Unit, unit_id) if unit_id is not None else None
    return unit.slug if unit is not None else None


def party_units_of(session: Session, entry_type: str, unit: str | None, details: Mapping,
                   extra: Iterable[str] = (),
                   product_units: dict[str, str | None] | None = None) -> list[str]:
    """The units whose members may read an entry's details (besides its actor and operators),
    from the references the details hold; computed once, when the entry is appended (and on
    reading a legacy entry). ``product_units`` caches product owners within a transaction (a
    product's unit never changes)."""
    found: list[str | None] = [unit]
    supplier = details.get("supplier")
    if isinstance(supplier, str):
        found.append(supplier)
    product = details.get("product")
    if isinstance(product, str):
        cache = {} if product_units is None else product_units
        if product not in cache:
            cache[product] = session.scalar(
                select(Unit.slug).join(Product, Product.unit_id == Unit.id)
                .where(Product.name == product))
        found.append(cache[product])
    order_id = details.get("order")
    if isinstance(order_id, int) and not isinstance(order_id, bool):
        order = session.get(Order, order_id)
        if order is not None:
            found.append(_slug(session, order.unit_id))
            owner = session.get(Product, order.product_id)
            found.append(_slug(session, owner.unit_id) if owner is not None else None)
    request_id = details.get("request")
    if entry_type == "m2d" and isinstance(request_id, int):
        request = session.get(ModelToDataRequest, request_id)
        if request is not None:
            found += [_slug(session, request.requester_unit_id),
                      _slug(session, request.owner_unit_id)]
    project_id = details.get("project_id")
    if isinstance(project_id, int) and entry_type.startswith("fl_"):
        from .federated.orm import FLMember, FLProject  # the federated zone imports this module

        project = session.get(FLProject, project_id)
        if project is not None:
            found.append(_slug(session, project.unit_id))
            if entry_type in ("fl_aggregate", "fl_split", "fl_model_product"):
                found += [_slug(session, m.unit_id) for m in session.scalars(
                    select(FLMember).where(FLMember.project_id == project_id,
                                           FLMember.status == "approved"))]
    found += list(extra)
    return [u for u in dict.fromkeys(found) if u]


def access(session: Session, row: LogEntry, viewer: Caller | None) -> str | None:
    """Why ``viewer`` may read the details of ``row`` (``operator``, ``actor``, ``party``,
    ``disclosed``), or None when it may read the public part only. ``row`` is a
    :class:`LogEntry` or a plain row of its columns."""
    if viewer is not None and viewer.is_operator:
        return "operator"
    if row.details is None:  # legacy: the readers come from the stored statement
        statement = json.loads(row.data)
        actor = statement.get("actor")
        parties = party_units_of(session, row.kind, statement.get("unit"), statement)
    else:
        actor, parties = row.actor, json.loads(row.parties or "[]")
    if viewer is not None and actor not in SYSTEM_ACTORS and viewer.name == actor:
        return "actor"
    if viewer is not None and viewer.unit is not None and viewer.unit in parties:
        return "party"
    if row.disclosed:
        return "disclosed"
    return None


def own_entries(session: Session, viewer: Caller, limit: int = 50,
                before: int | None = None) -> list[dict]:
    """The entries ``viewer`` acted in or whose unit is a party to, newest first (at most
    ``limit``, below index ``before``): index, type, time and why the viewer may read them."""
    mine = [LogEntry.actor == viewer.name]
    if viewer.unit:
        mine.append(LogEntry.parties.like(f'%"{viewer.unit}"%'))
    query = select(LogEntry).where(or_(*mine), LogEntry.details.is_not(None))
    if before is not None:
        query = query.where(LogEntry.idx < before)
    rows = session.scalars(query.order_by(LogEntry.idx.desc()).limit(limit))
    found = [(r, access(session, r, viewer)) for r in rows]
    return [{"index": r.idx, "type": r.kind, "time": json.loads(r.data).get("time"),
             "access": why} for r, why in found if why is not None]


def recent_checkpoints(session: Session, limit: int = 20) -> list[dict]:
    """The latest signed checkpoints, newest first, with the witnesses that co-signed each."""
    rows = session.scalars(select(LogCheckpoint).order_by(LogCheckpoint.size.desc())
                           .limit(limit)).all()
    sizes = [r.size for r in rows]
    witnessed: dict[int, list[str]] = {}
    for c in session.scalars(select(LogCosignature).where(LogCosignature.size.in_(sizes))
                             .order_by(LogCosignature.witness)):
        witnessed.setdefault(c.size, []).append(c.witness)
    return [{"size": r.size, "root": b64(bytes.fromhex(r.root)),
             "created_at": r.created_at.isoformat() + "Z",
             "witnesses": witnessed.get(r.size, [])} for r in rows]


_ENTRY_COLUMNS = "SELECT idx, data, leaf_hash, kind, details, salt, actor, parties, disclosed"


def _check_count(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidField(f"{field} must be a non-negative integer", field)


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
        self.upper_nodes = UpperNodeCache()

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

    def entry(self, session: Session, index: int, viewer: Caller | None = None) -> dict:
        """Entry ``index`` as ``viewer`` may see it (None: as a stranger sees it).

        Everyone gets the type, the time, the leaf hash and, for a private entry, ``data`` (the
        public part the leaf hashes, with the commitment). Readers (:func:`access`) also get
        ``details`` and ``salt`` (the exact bytes committed to) and ``statement``, the parsed
        ``{type, time, **details}``. A legacy entry's ``data`` is its whole statement, so it
        is null for a stranger.
        """
        _check_count(index, "index")
        session.flush()
        # the entry and the integrated size in one statement (one round trip), read as a plain
        # row (the same attribute names as LogEntry), not an ORM object
        row = session.connection().exec_driver_sql(
            f"{_ENTRY_COLUMNS}, (SELECT tree_size FROM log_state WHERE id = 1) AS tree_size "
            f"FROM log_entries WHERE idx = {int(index)}").first()
        if row is None:
            raise NotFound(f"no log entry {index}", "index")
        why = access(session, row, viewer)
        legacy = row.details is None
        public = None if legacy else logentry.parse_public(row.data)
        reply = {"index": row.idx, "type": row.kind,
                 "time": json.loads(row.data).get("time"), "legacy": legacy,
                 "commitment": None if legacy else public["commitment"],
                 "data": row.data if (why or not legacy) else None,
                 "leaf_hash": b64(bytes.fromhex(row.leaf_hash)),
                 "integrated": row.idx < (row.tree_size or 0),
                 "access": why or "public"}
        if why is not None:
            if legacy:
                reply["statement"] = json.loads(row.data)
            else:
                # as stored: checking them against the commitment is the reader's job (and
                # fsck's), so a tampered row is shown, and caught, rather than hidden
                reply.update(details=row.details, salt=row.salt, statement={
                    "type": row.kind, "time": reply["time"], **json.loads(row.details)})
        return reply

    def _tree_at(self, session: Session, size: int) -> merkle.MerkleTree:
        """The tree opened at ``size`` without reading the state row: its store checks ``size``
        against the integrated size in the proof's own statement (:class:`BeyondTree`)."""
        session.flush()  # this transaction's own integration, if any
        return merkle.MerkleTree(CachedNodeStore(session, self.upper_nodes, within=size), size)

    def inclusion(self, session: Session, index: int, size: int) -> dict:
        _check_count(size, "size")
        _check_count(index, "index")
        try:
            tree = self._tree_at(session, size)
            if not 0 <= index < size:
                tree.store.check_within()  # the size is checked first, as before
                raise InvalidField(f"index must be within [0, {size})", "index")
            proof = tree.inclusion_proof(index, size)
        except BeyondTree as e:
            raise InvalidField(f"size {size} is beyond the tree ({e.size})", "size") from None
        return {"index": index, "size": size, "proof": [b64(h) for h in proof]}

    def consistency(self, session: Session, old: int, new: int) -> dict:
        _check_count(new, "new")
        _check_count(old, "old")
        try:
            tree = self._tree_at(session, new)
            if not 0 <= old <= new:
                tree.store.check_within()
                raise InvalidField(f"old must be within [0, {new}]", "old")
            proof = tree.consistency_proof(old, new)
            tree.store.check_within()  # an empty proof read no node: check the size anyway
        except BeyondTree as e:
            raise InvalidField(f"new {new} is beyond the tree ({e.size})", "new") from None
        return {"old": old, "new": new, "proof": [b64(h) for h in proof]}

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
