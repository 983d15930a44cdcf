"""Tables of further training (:mod:`marketplace_ext.retrain`): derived model versions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .orm import Base, utcnow


class DerivedModel(Base):
    """A tool version retrained by a subscriber unit on its own data: the base version's
    bundle with its model file replaced by the one the training run produced. Private to
    ``unit_id``; its lineage (base bundle, parameters, training data digest, model digest) is
    certified in the log (``log_index``)."""

    __tablename__ = "derived_models"
    __table_args__ = (UniqueConstraint("run_id", name="uq_derived_models_run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("products.id", name="fk_derived_models_product_id"), nullable=False,
        index=True)
    base_version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", name="fk_derived_models_base_version_id"), nullable=False)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_derived_models_unit_id"), nullable=False, index=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", name="fk_derived_models_run_id"), nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    # training | ready | failed
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    parameters: Mapped[str] = mapped_column(Text, nullable=False, default="{}")  # JSON
    data_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    data_rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
