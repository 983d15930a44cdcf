"""Tables of the topics concern: topic requests (a unit's need with a points bounty held in an
escrow account of the ledger), the volunteers' proposals, and each topic's steps.

The escrow itself is an ``accounts`` row of kind ``escrow`` (owned by ``points.py``); a topic
only names it."""

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

from ..orm import Base, Unit, utcnow


class Topic(Base):
    """A unit's need: title, description, the data it can offer, a deadline and a bounty.

    ``status``: open -> assigned -> delivered -> accepted; a rejected delivery reopens it;
    past ``deadline`` an open or assigned topic is expired and the escrow goes back."""

    __tablename__ = "topics"
    __table_args__ = (UniqueConstraint("escrow_account_id", name="uq_topics_escrow_account_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_topics_unit_id"), nullable=False, index=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    data_offered: Mapped[str] = mapped_column(Text, nullable=False, default="")
    bounty: Mapped[int] = mapped_column(BigInteger, nullable=False)  # centipoints
    deadline: Mapped[datetime] = mapped_column(DateTime, nullable=False, index=True)
    # open | assigned | delivered | accepted | expired
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    escrow_account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", name="fk_topics_escrow_account_id"), nullable=False)
    assignee_unit_id: Mapped[int | None] = mapped_column(
        ForeignKey("units.id", name="fk_topics_assignee_unit_id"), nullable=True)
    delivered_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", name="fk_topics_delivered_version_id"), nullable=True)
    delivered_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    fee: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # on acceptance
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    unit: Mapped[Unit] = relationship(foreign_keys=[unit_id])
    assignee_unit: Mapped[Unit | None] = relationship(foreign_keys=[assignee_unit_id])
    proposals: Mapped[list[TopicProposal]] = relationship(
        back_populates="topic", order_by="TopicProposal.id")
    events: Mapped[list[TopicEvent]] = relationship(order_by="TopicEvent.id")


class TopicProposal(Base):
    """A publisher's offer, for its unit, to do a topic; one per unit and topic.
    ``status``: pending | assigned | accepted (a rejected delivery puts it back to pending)."""

    __tablename__ = "topic_proposals"
    __table_args__ = (UniqueConstraint("topic_id", "unit_id", name="uq_topic_proposals_unit"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    topic_id: Mapped[int] = mapped_column(
        ForeignKey("topics.id", name="fk_topic_proposals_topic_id"), nullable=False, index=True)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_topic_proposals_unit_id"), nullable=False)
    author: Mapped[str] = mapped_column(String(255), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    topic: Mapped[Topic] = relationship(back_populates="proposals")
    unit: Mapped[Unit] = relationship()


class TopicEvent(Base):
    """One step of a topic (posted, volunteered, assigned, delivered, accepted, rejected,
    expired): who, when, and the log entry certifying it; the topic page's timeline."""

    __tablename__ = "topic_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    topic_id: Mapped[int] = mapped_column(
        ForeignKey("topics.id", name="fk_topic_events_topic_id"), nullable=False, index=True)
    step: Mapped[str] = mapped_column(String(16), nullable=False)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
