"""exchange: topic requests with escrowed bounties (topics, proposals, steps)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

The escrow of a topic is an ``accounts`` row of kind ``escrow``: no change to that table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "topics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("data_offered", sa.Text(), nullable=False),
        sa.Column("bounty", sa.BigInteger(), nullable=False),
        sa.Column("deadline", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("escrow_account_id", sa.Integer(), nullable=False),
        sa.Column("assignee_unit_id", sa.Integer(), nullable=True),
        sa.Column("delivered_version_id", sa.Integer(), nullable=True),
        sa.Column("delivered_by", sa.String(length=255), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("fee", sa.BigInteger(), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_topics_unit_id"),
        sa.ForeignKeyConstraint(["escrow_account_id"], ["accounts.id"],
                                name="fk_topics_escrow_account_id"),
        sa.ForeignKeyConstraint(["assignee_unit_id"], ["units.id"],
                                name="fk_topics_assignee_unit_id"),
        sa.ForeignKeyConstraint(["delivered_version_id"], ["versions.id"],
                                name="fk_topics_delivered_version_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("escrow_account_id", name="uq_topics_escrow_account_id"),
    )
    op.create_index("ix_topics_unit_id", "topics", ["unit_id"])
    op.create_index("ix_topics_deadline", "topics", ["deadline"])
    op.create_index("ix_topics_status", "topics", ["status"])
    op.create_table(
        "topic_proposals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("author", sa.String(length=255), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], name="fk_topic_proposals_topic_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_topic_proposals_unit_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("topic_id", "unit_id", name="uq_topic_proposals_unit"),
    )
    op.create_index("ix_topic_proposals_topic_id", "topic_proposals", ["topic_id"])
    op.create_table(
        "topic_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], name="fk_topic_events_topic_id"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_topic_events_topic_id", "topic_events", ["topic_id"])


def downgrade() -> None:
    op.drop_index("ix_topic_events_topic_id", table_name="topic_events")
    op.drop_table("topic_events")
    op.drop_index("ix_topic_proposals_topic_id", table_name="topic_proposals")
    op.drop_table("topic_proposals")
    op.drop_index("ix_topics_status", table_name="topics")
    op.drop_index("ix_topics_deadline", table_name="topics")
    op.drop_index("ix_topics_unit_id", table_name="topics")
    op.drop_table("topics")
