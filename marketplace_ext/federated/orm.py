"""Tables of the federated-learning zone (owned by :mod:`marketplace_ext.federated`: projects,
enrolment, rounds).

What the service keeps is deliberately incomplete: the Paillier *public* key, each member's
X25519 public key and the Paillier private key *wrapped* for it, digests and sizes of encrypted
updates and aggregates (their bytes live in the blob store), sample counts and clip counts.
Never a private key, a plaintext update or a plaintext aggregate.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..orm import Base, Product, Unit, utcnow


class FLProject(Base):
    """A federated project opened by a publisher of ``unit``: model, schedule and keys."""

    __tablename__ = "fl_projects"
    __table_args__ = (UniqueConstraint("name", name="uq_fl_projects_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    task: Mapped[str] = mapped_column(Text, nullable=False)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_fl_projects_unit_id"), nullable=False, index=True
    )
    initiator: Mapped[str] = mapped_column(String(255), nullable=False)
    # enrolling | running | finished | cancelled | failed (federated/ending.py)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    rounds: Mapped[int] = mapped_column(Integer, nullable=False)
    quorum: Mapped[int] = mapped_column(Integer, nullable=False)
    min_updates: Mapped[int] = mapped_column(Integer, nullable=False)
    deadline_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    key_size: Mapped[int] = mapped_column(Integer, nullable=False)
    public_key: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {"n": "<decimal>"}
    key_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    pack_spec: Mapped[str] = mapped_column(Text, nullable=False)  # JSON, packing.PackSpec
    dp: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON or NULL
    model_sha256: Mapped[str] = mapped_column(String(64), nullable=False)  # a blob
    model_spec: Mapped[str] = mapped_column(Text, nullable=False)  # JSON
    current_round: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # JSON list of unit slugs whose joins are approved at once (NULL: the initiator approves each)
    allow_list: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the contribution measure the members agreed to at joining (federated/economy.py):
    # "weight" (data weight only) or "loo_weight" (opt-in: leave-one-out sums, see loo.py)
    contribution_measure: Mapped[str] = mapped_column(
        String(16), nullable=False, default="weight", server_default="weight"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    unit: Mapped[Unit] = relationship()
    members: Mapped[list[FLMember]] = relationship(back_populates="project", order_by="FLMember.id")


class FLMember(Base):
    """A unit taking part in a project (one row per unit), with its X25519 public key and the
    project's Paillier private key wrapped for that key by another member's client."""

    __tablename__ = "fl_members"
    __table_args__ = (UniqueConstraint("project_id", "unit_id", name="uq_fl_members_project_unit"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("fl_projects.id", name="fk_fl_members_project_id"), nullable=False, index=True
    )
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_fl_members_unit_id"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)  # initiator | partner
    # pending (asked to join) | approved (takes part) | refused; only approved members see the
    # project, get a wrapped key, send updates and count toward a quorum
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default="approved", server_default="approved"
    )
    decided_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    joined_by: Mapped[str] = mapped_column(String(255), nullable=False)
    joined_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    left_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)  # X25519, b64
    # Ed25519 signature (base64url) of the unit's registered signing key over
    # keys.member_key_statement(project, unit, public_key)
    key_signature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    key_registered_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    key_registered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    wrapped_key: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON, opaque
    wrapped_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    wrapped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    project: Mapped[FLProject] = relationship(back_populates="members")
    unit: Mapped[Unit] = relationship()


class FLUnitKey(Base):
    """A unit's Ed25519 public key for the federated zone: it signs the unit's members' X25519
    keys. The private half lives in the unit's own FL home, never on the service. Registered
    first by a publisher of the unit, replaced only by an operator; both are certified."""

    __tablename__ = "fl_unit_keys"

    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_fl_unit_keys_unit_id"), primary_key=True
    )
    public_key: Mapped[str] = mapped_column(String(64), nullable=False)  # base64url, 32 bytes
    registered_by: Mapped[str] = mapped_column(String(255), nullable=False)
    registered_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    unit: Mapped[Unit] = relationship()


class FLRound(Base):
    """One attempt at a round: a void attempt (too few updates by the deadline) is followed by
    a new attempt of the same number on the same global model."""

    __tablename__ = "fl_rounds"
    __table_args__ = (
        UniqueConstraint("project_id", "number", "attempt", name="uq_fl_rounds_number_attempt"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("fl_projects.id", name="fk_fl_rounds_project_id"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    # open | aggregating | published | void
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    # the global model the round trains from: the project's initial model (base_round 0) or
    # the aggregate published by round base_round
    base_round: Mapped[int] = mapped_column(Integer, nullable=False)
    base_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    opened_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    deadline: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)

    updates: Mapped[list[FLUpdate]] = relationship(order_by="FLUpdate.id")
    aggregate: Mapped[FLAggregate | None] = relationship()


class FLUpdate(Base):
    """One member's encrypted update to one round attempt (bytes in the blob store)."""

    __tablename__ = "fl_updates"
    __table_args__ = (UniqueConstraint("round_id", "member_id", name="uq_fl_updates_round_member"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(
        ForeignKey("fl_rounds.id", name="fk_fl_updates_round_id"), nullable=False, index=True
    )
    member_id: Mapped[int] = mapped_column(
        ForeignKey("fl_members.id", name="fk_fl_updates_member_id"), nullable=False
    )
    submitter: Mapped[str] = mapped_column(String(255), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    weight: Mapped[int] = mapped_column(BigInteger, nullable=False)
    clipped: Mapped[int] = mapped_column(Integer, nullable=False)
    key_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    member: Mapped[FLMember] = relationship()


class FLAggregate(Base):
    """The homomorphic sum of a round attempt's updates, as published to the members."""

    __tablename__ = "fl_aggregates"

    round_id: Mapped[int] = mapped_column(
        ForeignKey("fl_rounds.id", name="fk_fl_aggregates_round_id"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    parties: Mapped[int] = mapped_column(Integer, nullable=False)
    total_weight: Mapped[int] = mapped_column(BigInteger, nullable=False)
    contributors: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list of unit slugs
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class FLSlice(Base):
    """One slice of a published aggregate, decrypted by a member and sealed under the members'
    slice key (:mod:`.split_decrypt`); the service keeps the first post of each slice and
    never sees its plaintext (bytes in the blob store)."""

    __tablename__ = "fl_slices"
    __table_args__ = (UniqueConstraint("round_id", "slice", name="uq_fl_slices_round_slice"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(
        ForeignKey("fl_rounds.id", name="fk_fl_slices_round_id"), nullable=False
    )
    slice: Mapped[int] = mapped_column(Integer, nullable=False)
    member_id: Mapped[int] = mapped_column(
        ForeignKey("fl_members.id", name="fk_fl_slices_member_id"), nullable=False
    )
    submitter: Mapped[str] = mapped_column(String(255), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    member: Mapped[FLMember] = relationship()


class FLMetric(Base):
    """A member's plaintext validation metrics for a round (numbers only, never weights)."""

    __tablename__ = "fl_metrics"
    __table_args__ = (
        UniqueConstraint("project_id", "round", "member_id", name="uq_fl_metrics_round_member"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("fl_projects.id", name="fk_fl_metrics_project_id"), nullable=False, index=True
    )
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    member_id: Mapped[int] = mapped_column(
        ForeignKey("fl_members.id", name="fk_fl_metrics_member_id"), nullable=False
    )
    submitter: Mapped[str] = mapped_column(String(255), nullable=False)
    metrics: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {name: number}
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    member: Mapped[FLMember] = relationship()


# --- the economy of a project (owned by :mod:`.economy` and :mod:`.coowned`) ------------------


class FLProjectProduct(Base):
    """A data product (offering ``federated``) a project is opened on: its owner and the units
    with its ``federated`` entitlement may take part."""

    __tablename__ = "fl_project_products"
    __table_args__ = (UniqueConstraint("project_id", "product_id", name="uq_fl_project_products"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("fl_projects.id", name="fk_fl_project_products_project_id"),
        nullable=False,
        index=True,
    )
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_fl_project_products_product_id"),
        nullable=False,
        index=True,
    )

    product: Mapped[Product] = relationship()


class FLPool(Base):
    """A project's reward pool: points the initiator's unit escrowed (an ``escrow`` account),
    split among the members when the project ends (:class:`FLSettlement`)."""

    __tablename__ = "fl_pools"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("fl_projects.id", name="fk_fl_pools_project_id"), primary_key=True
    )
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", name="fk_fl_pools_account_id"), nullable=False
    )
    funded: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)  # centipoints
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class FLSettlement(Base):
    """The certified contribution measure and split of a finished project (one per project):
    shares in basis points (10 000 in all) and what the pool paid each unit."""

    __tablename__ = "fl_settlements"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("fl_projects.id", name="fk_fl_settlements_project_id"), primary_key=True
    )
    measure: Mapped[str] = mapped_column(String(32), nullable=False)  # loo_weight | submitted
    inputs: Mapped[str] = mapped_column(Text, nullable=False)  # JSON
    shares: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {unit: basis points}
    paid: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {unit: centipoints}
    fee: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    transfer_id: Mapped[int | None] = mapped_column(
        ForeignKey("transfers.id", name="fk_fl_settlements_transfer_id"), nullable=True
    )
    decided_by: Mapped[str] = mapped_column(String(255), nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class FLModelProduct(Base):
    """The tool product a finished project's members published its model as (co-owned by the
    settlement's shares, ``product_shares``)."""

    __tablename__ = "fl_model_products"
    __table_args__ = (UniqueConstraint("product_id", name="uq_fl_model_products_product"),)

    project_id: Mapped[int] = mapped_column(
        ForeignKey("fl_projects.id", name="fk_fl_model_products_project_id"), primary_key=True
    )
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_fl_model_products_product_id"), nullable=False
    )
    published_by: Mapped[str] = mapped_column(String(255), nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)

    product: Mapped[Product] = relationship()
