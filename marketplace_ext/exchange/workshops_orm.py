"""Tables of the workshops concern: workshops (a host's training with a capacity and a bundle of
notebooks as materials), enrolments, exercises graded by the host's checker notebook,
competitions scored on labels that stay with the host, trainees' submissions and the awards a
host paid to winners.

Blobs (materials zip, checker notebook, hidden labels, submitted notebooks) live in the blob
store; rows keep their sha256 (which also keeps them from the orphan collector)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..orm import Base, utcnow


class Workshop(Base):
    """A training event: ``capacity`` trainees at most; ``materials_sha256`` is a zip of the
    notebooks (and small data files) copied into each trainee's JupyterLab home."""

    __tablename__ = "workshops"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    summary: Mapped[str] = mapped_column(Text, nullable=False, default="")
    starts_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, index=True)
    capacity: Mapped[int] = mapped_column(Integer, nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    # the host's unit (a publisher's); None for an operator, who pays awards from the
    # operator account
    host_unit_id: Mapped[int | None] = mapped_column(
        ForeignKey("units.id", name="fk_workshops_host_unit_id"), nullable=True)
    materials_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    materials: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON paths
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Enrolment(Base):
    __tablename__ = "workshop_enrolments"
    __table_args__ = (UniqueConstraint("workshop_id", "user_name",
                                       name="uq_workshop_enrolments_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workshop_id: Mapped[int] = mapped_column(
        ForeignKey("workshops.id", name="fk_workshop_enrolments_workshop_id"), nullable=False,
        index=True)
    user_name: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_workshop_enrolments_unit_id"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    reminded_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Exercise(Base):
    """A parameterized exercise: the trainee's notebook runs with ``parameters`` and must
    write ``outputs`` (under ``outputs/``); the host's checker notebook then reads them from
    ``submission/`` and writes ``outputs/grade.json`` ({"passed", "feedback"})."""

    __tablename__ = "workshop_exercises"
    __table_args__ = (UniqueConstraint("workshop_id", "name", name="uq_workshop_exercises_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workshop_id: Mapped[int] = mapped_column(
        ForeignKey("workshops.id", name="fk_workshop_exercises_workshop_id"), nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    parameters: Mapped[str] = mapped_column(Text, nullable=False, default="{}")  # JSON
    outputs: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON names
    checker_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Competition(Base):
    """A task scored on the host's hidden labels (``labels_sha256``: CSV ``id,label``): a row
    is in the public split when a keyed hash of its id falls under ``public_percent``; the
    key (``split_key``) never leaves the service, so nobody can tell which rows are public."""

    __tablename__ = "workshop_competitions"
    __table_args__ = (UniqueConstraint("workshop_id", "name",
                                       name="uq_workshop_competitions_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workshop_id: Mapped[int] = mapped_column(
        ForeignKey("workshops.id", name="fk_workshop_competitions_workshop_id"), nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    metric: Mapped[str] = mapped_column(String(16), nullable=False)  # accuracy | mae
    deadline: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    public_percent: Mapped[int] = mapped_column(Integer, nullable=False)
    labels_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    split_key: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Submission(Base):
    """A trainee's notebook for an exercise or a competition, and its grade.

    ``status``: grading -> passed | failed (exercises), scored | failed (competitions)."""

    __tablename__ = "workshop_submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workshop_id: Mapped[int] = mapped_column(
        ForeignKey("workshops.id", name="fk_workshop_submissions_workshop_id"), nullable=False,
        index=True)
    exercise_id: Mapped[int | None] = mapped_column(
        ForeignKey("workshop_exercises.id", name="fk_workshop_submissions_exercise_id"),
        nullable=True)
    competition_id: Mapped[int | None] = mapped_column(
        ForeignKey("workshop_competitions.id", name="fk_workshop_submissions_competition_id"),
        nullable=True, index=True)
    user_name: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_workshop_submissions_unit_id"), nullable=False)
    notebook_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    feedback: Mapped[str] = mapped_column(Text, nullable=False, default="")
    public_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    private_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    graded_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Award(Base):
    """Points a host paid a competition's winner (one award per winner and competition)."""

    __tablename__ = "workshop_awards"
    __table_args__ = (UniqueConstraint("competition_id", "user_name",
                                       name="uq_workshop_awards_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    competition_id: Mapped[int] = mapped_column(
        ForeignKey("workshop_competitions.id", name="fk_workshop_awards_competition_id"),
        nullable=False)
    user_name: Mapped[str] = mapped_column(String(255), nullable=False)
    unit_id: Mapped[int] = mapped_column(
        ForeignKey("units.id", name="fk_workshop_awards_unit_id"), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)  # centipoints
    transfer_id: Mapped[int] = mapped_column(
        ForeignKey("transfers.id", name="fk_workshop_awards_transfer_id"), nullable=False)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
