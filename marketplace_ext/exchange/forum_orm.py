"""The forum's tables: threads (attached to a product, a topic or a category) and their posts.

A post keeps the Markdown its author typed (``body``, plain text: inert wherever it goes) and
the HTML it renders to, sanitized by nh3 when it is written (``html``): pages show only that.
Operators hide a thread or a post with a reason; hidden rows stay (moderation is on record).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..orm import Base, utcnow


class ForumThread(Base):
    """A discussion. ``target_kind`` is ``product``, ``topic`` or ``category``; ``target`` the
    product's name, the topic's id or the category's slug."""

    __tablename__ = "forum_threads"
    __table_args__ = (Index("ix_forum_threads_target", "target_kind", "target"),
                      Index("ix_forum_threads_last_post_at", "last_post_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    target: Mapped[str] = mapped_column(String(128), nullable=False)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    author: Mapped[str] = mapped_column(String(255), nullable=False)
    author_unit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    last_post_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    post_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    hidden_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    hidden_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    hidden_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    posts: Mapped[list[ForumPost]] = relationship(
        back_populates="thread", order_by="ForumPost.id", cascade="all, delete-orphan")


class ForumPost(Base):
    """One message of a thread (the thread's first post is its opening message)."""

    __tablename__ = "forum_posts"
    __table_args__ = (Index("ix_forum_posts_thread", "thread_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thread_id: Mapped[int] = mapped_column(
        ForeignKey("forum_threads.id", ondelete="CASCADE", name="fk_forum_posts_thread_id"),
        nullable=False)
    author: Mapped[str] = mapped_column(String(255), nullable=False)
    author_unit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    html: Mapped[str] = mapped_column(Text, nullable=False)
    mentions: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    hidden_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    hidden_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    hidden_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    thread: Mapped[ForumThread] = relationship(back_populates="posts")
