"""federated: projects, members, rounds, encrypted updates, aggregates, metrics

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("initiator", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("min_updates", sa.Integer(), nullable=False),
        sa.Column("deadline_seconds", sa.Integer(), nullable=False),
        sa.Column("key_size", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("pack_spec", sa.Text(), nullable=False),
        sa.Column("dp", sa.Text(), nullable=True),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_spec", sa.Text(), nullable=False),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_fl_projects_unit_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_fl_projects_name"),
    )
    with op.batch_alter_table("fl_projects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_projects_unit_id"), ["unit_id"], unique=False)

    op.create_table(
        "fl_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("joined_by", sa.String(length=255), nullable=False),
        sa.Column("joined_at", sa.DateTime(), nullable=False),
        sa.Column("left_at", sa.DateTime(), nullable=True),
        sa.Column("public_key", sa.String(length=64), nullable=True),
        sa.Column("key_registered_by", sa.String(length=255), nullable=True),
        sa.Column("key_registered_at", sa.DateTime(), nullable=True),
        sa.Column("wrapped_key", sa.Text(), nullable=True),
        sa.Column("wrapped_by", sa.String(length=255), nullable=True),
        sa.Column("wrapped_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["fl_projects.id"],
                                name="fk_fl_members_project_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_fl_members_unit_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "unit_id", name="uq_fl_members_project_unit"),
    )
    with op.batch_alter_table("fl_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_members_project_id"), ["project_id"],
                              unique=False)

    op.create_table(
        "fl_rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("base_round", sa.Integer(), nullable=False),
        sa.Column("base_sha256", sa.String(length=64), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("deadline", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("close_reason", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["fl_projects.id"],
                                name="fk_fl_rounds_project_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "number", "attempt",
                            name="uq_fl_rounds_number_attempt"),
    )
    with op.batch_alter_table("fl_rounds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_rounds_project_id"), ["project_id"],
                              unique=False)

    op.create_table(
        "fl_updates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("submitter", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("weight", sa.BigInteger(), nullable=False),
        sa.Column("clipped", sa.Integer(), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["fl_members.id"],
                                name="fk_fl_updates_member_id"),
        sa.ForeignKeyConstraint(["round_id"], ["fl_rounds.id"], name="fk_fl_updates_round_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("round_id", "member_id", name="uq_fl_updates_round_member"),
    )
    with op.batch_alter_table("fl_updates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_updates_round_id"), ["round_id"], unique=False)

    op.create_table(
        "fl_aggregates",
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("parties", sa.Integer(), nullable=False),
        sa.Column("total_weight", sa.BigInteger(), nullable=False),
        sa.Column("contributors", sa.Text(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["round_id"], ["fl_rounds.id"],
                                name="fk_fl_aggregates_round_id"),
        sa.PrimaryKeyConstraint("round_id"),
    )

    op.create_table(
        "fl_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("submitter", sa.String(length=255), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["fl_members.id"],
                                name="fk_fl_metrics_member_id"),
        sa.ForeignKeyConstraint(["project_id"], ["fl_projects.id"],
                                name="fk_fl_metrics_project_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "round", "member_id",
                            name="uq_fl_metrics_round_member"),
    )
    with op.batch_alter_table("fl_metrics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_metrics_project_id"), ["project_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fl_metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_metrics_project_id"))
    op.drop_table("fl_metrics")
    op.drop_table("fl_aggregates")
    with op.batch_alter_table("fl_updates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_updates_round_id"))
    op.drop_table("fl_updates")
    with op.batch_alter_table("fl_rounds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_rounds_project_id"))
    op.drop_table("fl_rounds")
    with op.batch_alter_table("fl_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_members_project_id"))
    op.drop_table("fl_members")
    with op.batch_alter_table("fl_projects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_projects_unit_id"))
    op.drop_table("fl_projects")
