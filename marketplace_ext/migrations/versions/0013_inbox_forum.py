"""exchange: the inbox (notifications, mail settings) and the forum (threads, posts)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("link", sa.String(length=500), nullable=False),
        sa.Column("ref", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("read_at", sa.DateTime(), nullable=True),
        sa.Column("emailed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notifications_user_read", "notifications", ["user_name", "read_at"])
    op.create_index("ix_notifications_kind_ref", "notifications", ["kind", "ref"])
    op.create_index("ix_notifications_mail", "notifications", ["emailed_at", "user_name"])
    op.create_table(
        "mail_settings",
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=254), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_name"),
    )
    op.create_table(
        "forum_threads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target_kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("author", sa.String(length=255), nullable=False),
        sa.Column("author_unit", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_post_at", sa.DateTime(), nullable=False),
        sa.Column("post_count", sa.Integer(), nullable=False),
        sa.Column("hidden", sa.Boolean(), nullable=False),
        sa.Column("hidden_reason", sa.String(length=500), nullable=True),
        sa.Column("hidden_by", sa.String(length=255), nullable=True),
        sa.Column("hidden_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_forum_threads_target", "forum_threads", ["target_kind", "target"])
    op.create_index("ix_forum_threads_last_post_at", "forum_threads", ["last_post_at"])
    op.create_table(
        "forum_posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column("author", sa.String(length=255), nullable=False),
        sa.Column("author_unit", sa.String(length=64), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("mentions", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("hidden", sa.Boolean(), nullable=False),
        sa.Column("hidden_reason", sa.String(length=500), nullable=True),
        sa.Column("hidden_by", sa.String(length=255), nullable=True),
        sa.Column("hidden_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["thread_id"], ["forum_threads.id"], ondelete="CASCADE",
                                name="fk_forum_posts_thread_id"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_forum_posts_thread", "forum_posts", ["thread_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_forum_posts_thread", table_name="forum_posts")
    op.drop_table("forum_posts")
    op.drop_index("ix_forum_threads_last_post_at", table_name="forum_threads")
    op.drop_index("ix_forum_threads_target", table_name="forum_threads")
    op.drop_table("forum_threads")
    op.drop_table("mail_settings")
    op.drop_index("ix_notifications_mail", table_name="notifications")
    op.drop_index("ix_notifications_kind_ref", table_name="notifications")
    op.drop_index("ix_notifications_user_read", table_name="notifications")
    op.drop_table("notifications")
