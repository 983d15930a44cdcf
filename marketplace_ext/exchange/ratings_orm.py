"""Tables of the ratings concern: reviews (a 1-5 rating and a text per user per version, the
publisher's reply, an operator's hiding) and features (an operator's promotion of a product for
a time window). Unit types live on ``units.type`` (``orm.py``, owned by ``units.py``)."""

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
from sqlalchemy.orm import Mapped, mapped_column

from ..orm import Base, utcnow


class Review(Base):
    """One user's rating of one version: 1-5 stars and a Markdown text (sanitized on display).
    Editable by its author for :data:`ratings.EDIT_WINDOW` after it was made; the owning unit's
    publishers may reply once (and edit the reply); operators may hide it with a reason."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("version_id", "user_name",
                                       name="uq_reviews_version_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_reviews_product_id"), nullable=False, index=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", name="fk_reviews_version_id"), nullable=False)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_reviews_unit_id"), nullable=False)
    user_name: Mapped[str] = mapped_column(String(255), nullable=False)
    stars: Mapped[int] = mapped_column(Integer, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    reply_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reply_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    hidden_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    hidden_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    hidden_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    hidden_log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Feature(Base):
    """An operator's promotion of a product from ``starts_at`` to ``ends_at``, with a reason.
    It puts the product in the shelf's Featured section; it never changes the ranking score."""

    __tablename__ = "features"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_features_product_id"), nullable=False, index=True)
    starts_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    ends_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
