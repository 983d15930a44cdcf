"""The inbox's tables: one row per notification per user, and each user's e-mail setting."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..orm import Base, utcnow


class Notification(Base):
    """Something a user should know: a version decided, a bounty paid, a new review. ``link`` is
    a marketplace-relative path (no scheme, no host) that the inbox page turns into a link.
    ``ref`` names the event (e.g. ``fl_round:12``) where one event must notify only once."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user_read", "user_name", "read_at"),
                      Index("ix_notifications_kind_ref", "kind", "ref"),
                      Index("ix_notifications_mail", "emailed_at", "user_name"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(255), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    subject: Mapped[str] = mapped_column(String(300), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    link: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    ref: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    read_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    emailed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class MailSetting(Base):
    """A user's choice to receive notifications by e-mail too (only where the operator
    configured SMTP). Notifications from before ``since`` are never mailed."""

    __tablename__ = "mail_settings"

    user_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    address: Mapped[str] = mapped_column(String(254), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    since: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
