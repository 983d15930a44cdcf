"""SQLAlchemy 2 models and engine set-up for the marketplace service.

Each concern owns its tables; this module only declares them. Schema changes go through
Alembic (``marketplace_ext/migrations``), never ``create_all`` outside tests of the models.
"""

from __future__ import annotations

import logging
import threading
import weakref
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Unit(Base):
    """An organisation (provincial company, institute, headquarters); mirrored as hub group
    ``unit-<slug>``."""

    __tablename__ = "units"
    __table_args__ = (UniqueConstraint("slug", name="uq_units_slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(32), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    # the paper's unit types (units.UNIT_TYPES): headquarters, provincial_company, ...
    type: Mapped[str] = mapped_column(String(32), nullable=False, default="provincial_company",
                                      server_default="provincial_company")

    members: Mapped[list[Member]] = relationship(
        back_populates="unit", order_by="Member.user_name", passive_deletes=True
    )

    @property
    def hub_group(self) -> str:
        return f"unit-{self.slug}"


class Member(Base):
    """A hub user's membership; the primary key on the user name is what keeps a user in
    exactly one unit, even under concurrent requests."""

    __tablename__ = "members"

    user_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", ondelete="CASCADE", name="fk_members_unit_id"),
        nullable=False,
        index=True,
    )
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    added_by: Mapped[str] = mapped_column(String(255), nullable=False)

    unit: Mapped[Unit] = relationship(back_populates="members")


def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    # pysqlite would only BEGIN before the first write, so a balance read and the debit after it
    # would not share a transaction; take over BEGIN ourselves (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    # WAL lets readers proceed during a write; the busy timeout turns a concurrent write into a
    # short wait instead of "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_end_dangling(dbapi_connection, connection_record) -> None:
    # a COMMIT that failed (a deferred foreign key, a full disk) leaves SQLite's transaction
    # open, and the pool skips its rollback for a transaction SQLAlchemy counts as ended: the
    # next user of the connection would find it mid-transaction (and the write lock held)
    if dbapi_connection is not None and dbapi_connection.in_transaction:
        dbapi_connection.rollback()


def _sqlite_begin(conn) -> None:
    # a write transaction that reads first (a balance check) must hold the write lock from the
    # start, or two of them could both pass the check; ask for it with write_transaction()
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


#: seconds a SQLite writer waits for the database (its busy timeout), and for the process's
#: writer lock before it falls back to SQLite's own waiting
SQLITE_BUSY_SECONDS = 10.0

# one lock per SQLite engine: this process's writers queue on it instead of in SQLite's busy
# handler, which polls with growing sleeps (1, 2, 5, 10 ... ms) and leaves the database idle
# between one writer's commit and the next one's wake-up
_SQLITE_WRITER_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = \
    weakref.WeakKeyDictionary()
_HELD_WRITER_LOCK = "orm.sqlite_writer_lock"


def make_engine(db_url: str, **kwargs) -> Engine:
    """An engine for ``db_url``; SQLite files get WAL, foreign keys, a busy timeout, real
    transactions and a writer lock for the process (:func:`write_transaction`)."""
    sqlite = db_url.startswith("sqlite")
    # a dropped server connection is found before use; a SQLite file has none to drop (the
    # ping would be one more statement per session)
    kwargs.setdefault("pool_pre_ping", not sqlite)
    engine = create_engine(db_url, future=True, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        event.listen(engine.pool, "checkin", _sqlite_end_dangling)
        _SQLITE_WRITER_LOCKS[engine] = threading.Lock()
    return engine


def write_transaction(session) -> None:
    """Start ``session``'s transaction as a writer: on SQLite ``BEGIN IMMEDIATE`` (the database
    write lock, so check-then-write sequences are serialised); elsewhere row locks do that.

    On SQLite the process's writers first queue on the engine's writer lock, held until the
    transaction ends (commit, rollback or close). Another process's writers still meet the
    busy timeout, and a writer that waited longer than that for the lock goes on to SQLite's
    own waiting, as before."""
    lock = _SQLITE_WRITER_LOCKS.get(session.get_bind()) if not session.in_transaction() \
        else None
    if lock is not None:
        if lock.acquire(timeout=SQLITE_BUSY_SECONDS):
            session.info[_HELD_WRITER_LOCK] = lock
        else:
            log.warning("a SQLite writer waited %.0f s for the writer lock; going on to the "
                        "database's busy timeout", SQLITE_BUSY_SECONDS)
    try:
        session.connection(execution_options={"sqlite_immediate": True})
    except BaseException:
        _release_writer_lock(session)
        raise


def _release_writer_lock(session) -> None:
    lock = session.info.pop(_HELD_WRITER_LOCK, None)
    if lock is not None:
        lock.release()


@event.listens_for(Session, "after_transaction_end")
def _writer_transaction_ended(session, transaction) -> None:
    if transaction.parent is None:  # the root transaction, not a savepoint
        _release_writer_lock(session)


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)


# --- catalogue (owned by catalog.py) -----------------------------------------------------------


class Product(Base):
    """A product of a unit: its identity and the version currently on sale."""

    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("name", name="uq_products_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_products_unit_id"), nullable=False, index=True
    )
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", name="fk_products_current_version_id", use_alter=True),
        nullable=True,
    )
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)

    unit: Mapped[Unit] = relationship()
    versions: Mapped[list[Version]] = relationship(
        back_populates="product", foreign_keys="Version.product_id", order_by="Version.id"
    )
    current_version: Mapped[Version | None] = relationship(
        foreign_keys=[current_version_id], post_update=True
    )


class Version(Base):
    """An immutable bundle of a product, identified by the sha256 of its canonical archive."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("product_id", "version", name="uq_versions_product_version"),
        UniqueConstraint("product_id", "sha256", name="uq_versions_product_sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_versions_product_id"), nullable=False, index=True
    )
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    summary: Mapped[str] = mapped_column(Text, nullable=False)
    tags: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list, for display
    manifest: Mapped[str] = mapped_column(Text, nullable=False)  # JSON
    parameters: Mapped[str] = mapped_column(Text, nullable=False)  # JSON, papermill's inspection
    files: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list of bundle paths
    readme: Mapped[str] = mapped_column(Text, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    # JSON {path: sha256} of every file, so a download can be checked against the log
    file_digests: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # sha256 of the normalised requirements.txt: the product's own environment, if it has one
    env_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)

    product: Mapped[Product] = relationship(back_populates="versions", foreign_keys=[product_id])
    transitions: Mapped[list[Transition]] = relationship(
        back_populates="version", order_by="Transition.id"
    )
    agreement: Mapped[Agreement | None] = relationship(back_populates="version")


class Tag(Base):
    """Search index of a version's tags (one row per tag)."""

    __tablename__ = "version_tags"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", name="fk_version_tags_version_id"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Transition(Base):
    """One step of a version through the shelf states: who, when, why."""

    __tablename__ = "transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", name="fk_transitions_version_id"), nullable=False, index=True
    )
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16), nullable=False)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    actor_is_operator: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    version: Mapped[Version] = relationship(back_populates="transitions")


class Agreement(Base):
    """The publisher's sharing agreement for a version, signed with the unit's Ed25519 key."""

    __tablename__ = "agreements"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", name="fk_agreements_version_id"), primary_key=True
    )
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_agreements_unit_id"), nullable=False
    )
    signer: Mapped[str] = mapped_column(String(255), nullable=False)
    terms: Mapped[str] = mapped_column(Text, nullable=False)
    statement: Mapped[str] = mapped_column(Text, nullable=False)  # canonical JSON that was signed
    signature: Mapped[str] = mapped_column(String(128), nullable=False)  # base64
    public_key: Mapped[str] = mapped_column(String(64), nullable=False)  # base64 raw Ed25519
    signed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    version: Mapped[Version] = relationship(back_populates="agreement")


# --- unit signing keys (owned by signing.py) ---------------------------------------------------


class UnitKey(Base):
    """A unit's Ed25519 signing key, held by the service; the private half is sealed with the
    service's key-encryption key from var/ so a database dump alone cannot sign."""

    __tablename__ = "unit_keys"

    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_unit_keys_unit_id"), primary_key=True
    )
    public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    sealed_private_key: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


# --- points economy (owned by points.py) -------------------------------------------------------


class Account(Base):
    """A points account: one per unit, one operator fee account, one mint. ``balance`` is the
    running sum of its postings in centipoints, kept beside them so a purchase can lock and
    check one row; tests recompute it from the postings."""

    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("unit_id", name="uq_accounts_unit_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # unit | operator | mint
    unit_id: Mapped[int | None] = mapped_column(
        ForeignKey("units.id", name="fk_accounts_unit_id"), nullable=True
    )
    balance: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    unit: Mapped[Unit | None] = relationship()


class LedgerTransfer(Base):
    """One immutable double-entry transfer; its postings sum to zero."""

    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # grant | order | reversal
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", name="fk_transfers_order_id"), nullable=True, index=True
    )
    reverses_id: Mapped[int | None] = mapped_column(
        ForeignKey("transfers.id", name="fk_transfers_reverses_id"), nullable=True, unique=True
    )
    memo: Mapped[str] = mapped_column(Text, nullable=False, default="")
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    postings: Mapped[list[Posting]] = relationship(back_populates="transfer",
                                                   order_by="Posting.id")


class Posting(Base):
    """One leg of a transfer: ``amount`` centipoints into (positive) or out of an account."""

    __tablename__ = "postings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transfer_id: Mapped[int] = mapped_column(
        ForeignKey("transfers.id", name="fk_postings_transfer_id"), nullable=False, index=True
    )
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", name="fk_postings_account_id"), nullable=False, index=True
    )
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)

    transfer: Mapped[LedgerTransfer] = relationship(back_populates="postings")
    account: Mapped[Account] = relationship()


class Order(Base):
    """A unit's purchase of a product plan; the idempotency key is unique per buying unit."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("unit_id", "idempotency_key", name="uq_orders_unit_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_orders_unit_id"), nullable=False, index=True
    )
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_orders_product_id"), nullable=False, index=True
    )
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", name="fk_orders_version_id"), nullable=False
    )
    plan: Mapped[str] = mapped_column(String(16), nullable=False)
    price: Mapped[int] = mapped_column(BigInteger, nullable=False)  # centipoints
    fee: Mapped[int] = mapped_column(BigInteger, nullable=False)  # centipoints
    idempotency_key: Mapped[str] = mapped_column(String(128), nullable=False)
    request_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # paid | refunded
    buyer: Mapped[str] = mapped_column(String(255), nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    unit: Mapped[Unit] = relationship()
    product: Mapped[Product] = relationship()
    entitlement: Mapped[Entitlement | None] = relationship(back_populates="order")


class Entitlement(Base):
    """What an order grants: one use (per_use) or access until ``valid_until`` (periods)."""

    __tablename__ = "entitlements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(
        ForeignKey("orders.id", name="fk_entitlements_order_id"), nullable=False, unique=True
    )
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_entitlements_unit_id"), nullable=False, index=True
    )
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_entitlements_product_id"), nullable=False, index=True
    )
    plan: Mapped[str] = mapped_column(String(16), nullable=False)
    valid_from: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    valid_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    uses_left: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # active | used | refunded

    order: Mapped[Order] = relationship(back_populates="entitlement")


class ProductShare(Base):
    """A co-owner of a product and its certified share (basis points, 10 000 in all per
    product): a federated project's model sells for its members (``purchase.place_order``)."""

    __tablename__ = "product_shares"
    __table_args__ = (UniqueConstraint("product_id", "unit_id", name="uq_product_shares_unit"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_product_shares_product_id"), nullable=False,
        index=True)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_product_shares_unit_id"), nullable=False)
    basis_points: Mapped[int] = mapped_column(Integer, nullable=False)
    source: Mapped[str] = mapped_column(String(64), nullable=False)  # e.g. fl_project:12

    unit: Mapped[Unit] = relationship()


# --- transparency log (owned by certlog.py) ----------------------------------------------------


class LogState(Base):
    """The log's single counter row: entries sequenced so far and the size of the integrated
    tree. Appending locks this row, which is what makes indices dense and gapless."""

    __tablename__ = "log_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_index: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    tree_size: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class LogEntry(Base):
    """One certified statement at its leaf index.

    ``data`` is what the leaf hashes: the public part (type, time, salted commitment to the
    details) since revision 0009, the whole statement for legacy entries written before it.
    ``details`` and ``salt`` are the private part; ``actor``, ``parties`` and ``disclosed``
    decide who may read it (see :mod:`marketplace_ext.certlog`)."""

    __tablename__ = "log_entries"

    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[str] = mapped_column(Text, nullable=False)
    leaf_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    details: Mapped[str | None] = mapped_column(Text, nullable=True)  # canonical JSON
    salt: Mapped[str | None] = mapped_column(String(64), nullable=True)  # hex, 32 bytes
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    parties: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of unit slugs
    disclosed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class LogNode(Base):
    """A complete subtree hash: (level, index) covers leaves [index*2^level, (index+1)*2^level)."""

    __tablename__ = "log_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class LogCheckpoint(Base):
    """A signed tree head (C2SP checkpoint note, signed by the log key)."""

    __tablename__ = "log_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[str] = mapped_column(String(64), nullable=False)
    note: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class LogCosignature(Base):
    """A witness's cosignature line on a checkpoint."""

    __tablename__ = "log_cosignatures"

    size: Mapped[int] = mapped_column(
        ForeignKey("log_checkpoints.size", name="fk_log_cosignatures_size"), primary_key=True
    )
    witness: Mapped[str] = mapped_column(String(255), primary_key=True)
    line: Mapped[str] = mapped_column(Text, nullable=False)
    timestamp: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


# --- runs (owned by runner.py) -----------------------------------------------------------------


class Run(Base):
    """One papermill execution of a product version, from queueing to its stored outputs."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_runs_product_id"), nullable=False, index=True
    )
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", name="fk_runs_version_id"), nullable=False
    )
    unit_id: Mapped[int | None] = mapped_column(
        ForeignKey("units.id", name="fk_runs_unit_id"), nullable=True, index=True
    )
    user: Mapped[str] = mapped_column(String(255), nullable=False)
    mode: Mapped[str] = mapped_column(String(16), nullable=False)  # remote_run | remote_call | m2d
    entitlement_id: Mapped[int | None] = mapped_column(
        ForeignKey("entitlements.id", name="fk_runs_entitlement_id"), nullable=True
    )
    # queued | running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    parameters: Mapped[str] = mapped_column(Text, nullable=False, default="{}")  # JSON
    data_kind: Mapped[str] = mapped_column(String(16), nullable=False, default="platform")
    data_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # an upload
    data_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    timeout_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    cells_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    cells_total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # .ipynb
    html_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artifacts: Mapped[str] = mapped_column(Text, nullable=False, default="{}")  # JSON name->sha
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # the service process executing it and until when its claim holds (run_leases.py): another
    # process takes a running run over only once its lease has expired
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class Lease(Base):
    """A named singleton job (the log integrator, the FL round coordinator) held by one
    service process at a time until ``expires_at`` (leases.py)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class ModelToDataRequest(Base):
    """A demander's training notebook sent to run on a data owner's private tables: the owner
    reads the code and decides; only the declared, checked files go back."""

    __tablename__ = "m2d_requests"
    __table_args__ = (UniqueConstraint("run_id", name="uq_m2d_requests_run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_m2d_requests_product_id"), nullable=False, index=True
    )
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", name="fk_m2d_requests_version_id"), nullable=False
    )
    requester: Mapped[str] = mapped_column(String(255), nullable=False)
    requester_unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_m2d_requests_requester_unit_id"), nullable=False,
        index=True
    )
    owner_unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_m2d_requests_owner_unit_id"), nullable=False, index=True
    )
    purpose: Mapped[str] = mapped_column(Text, nullable=False)
    notebook_sha256: Mapped[str] = mapped_column(String(64), nullable=False)  # a blob
    parameters: Mapped[str] = mapped_column(Text, nullable=False, default="{}")  # JSON
    outputs: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list of declared paths
    # JSON {path: schema} for each declared .json output (m2d_outputs.check_schema)
    output_schemas: Mapped[str] = mapped_column(Text, nullable=False, default="{}",
                                                server_default="{}")
    timeout_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    entitlement_id: Mapped[int | None] = mapped_column(
        ForeignKey("entitlements.id", name="fk_m2d_requests_entitlement_id"), nullable=True
    )
    # pending | approved | rejected; the run carries the rest
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    decided_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", name="fk_m2d_requests_run_id"), nullable=True
    )
    released: Mapped[str] = mapped_column(Text, nullable=False, default="{}")  # path -> sha256
    withheld: Mapped[str] = mapped_column(Text, nullable=False, default="{}")  # path -> why
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
