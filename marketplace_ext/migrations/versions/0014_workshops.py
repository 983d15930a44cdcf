"""exchange: workshops, enrolments, exercises, competitions, submissions and awards

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workshops",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("host_unit_id", sa.Integer(), nullable=True),
        sa.Column("materials_sha256", sa.String(length=64), nullable=False),
        sa.Column("materials", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["host_unit_id"], ["units.id"],
                                name="fk_workshops_host_unit_id"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_workshops_starts_at", "workshops", ["starts_at"])
    op.create_table(
        "workshop_enrolments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workshop_id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("reminded_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["workshop_id"], ["workshops.id"],
                                name="fk_workshop_enrolments_workshop_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"],
                                name="fk_workshop_enrolments_unit_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workshop_id", "user_name", name="uq_workshop_enrolments_user"),
    )
    op.create_index("ix_workshop_enrolments_workshop_id", "workshop_enrolments",
                    ["workshop_id"])
    op.create_index("ix_workshop_enrolments_user_name", "workshop_enrolments", ["user_name"])
    op.create_table(
        "workshop_exercises",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workshop_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.Column("checker_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["workshop_id"], ["workshops.id"],
                                name="fk_workshop_exercises_workshop_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workshop_id", "name", name="uq_workshop_exercises_name"),
    )
    op.create_table(
        "workshop_competitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workshop_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("deadline", sa.DateTime(), nullable=False),
        sa.Column("public_percent", sa.Integer(), nullable=False),
        sa.Column("labels_sha256", sa.String(length=64), nullable=False),
        sa.Column("split_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["workshop_id"], ["workshops.id"],
                                name="fk_workshop_competitions_workshop_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workshop_id", "name", name="uq_workshop_competitions_name"),
    )
    op.create_table(
        "workshop_submissions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workshop_id", sa.Integer(), nullable=False),
        sa.Column("exercise_id", sa.Integer(), nullable=True),
        sa.Column("competition_id", sa.Integer(), nullable=True),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("notebook_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("feedback", sa.Text(), nullable=False),
        sa.Column("public_score", sa.Float(), nullable=True),
        sa.Column("private_score", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("graded_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["workshop_id"], ["workshops.id"],
                                name="fk_workshop_submissions_workshop_id"),
        sa.ForeignKeyConstraint(["exercise_id"], ["workshop_exercises.id"],
                                name="fk_workshop_submissions_exercise_id"),
        sa.ForeignKeyConstraint(["competition_id"], ["workshop_competitions.id"],
                                name="fk_workshop_submissions_competition_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"],
                                name="fk_workshop_submissions_unit_id"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_workshop_submissions_workshop_id", "workshop_submissions",
                    ["workshop_id"])
    op.create_index("ix_workshop_submissions_competition_id", "workshop_submissions",
                    ["competition_id"])
    op.create_index("ix_workshop_submissions_user_name", "workshop_submissions", ["user_name"])
    op.create_index("ix_workshop_submissions_status", "workshop_submissions", ["status"])
    op.create_table(
        "workshop_awards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("competition_id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", sa.Integer(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["competition_id"], ["workshop_competitions.id"],
                                name="fk_workshop_awards_competition_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_workshop_awards_unit_id"),
        sa.ForeignKeyConstraint(["transfer_id"], ["transfers.id"],
                                name="fk_workshop_awards_transfer_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("competition_id", "user_name", name="uq_workshop_awards_user"),
    )


def downgrade() -> None:
    op.drop_table("workshop_awards")
    for name in ("status", "user_name", "competition_id", "workshop_id"):
        op.drop_index(f"ix_workshop_submissions_{name}", table_name="workshop_submissions")
    op.drop_table("workshop_submissions")
    op.drop_table("workshop_competitions")
    op.drop_table("workshop_exercises")
    op.drop_index("ix_workshop_enrolments_user_name", table_name="workshop_enrolments")
    op.drop_index("ix_workshop_enrolments_workshop_id", table_name="workshop_enrolments")
    op.drop_table("workshop_enrolments")
    op.drop_index("ix_workshops_starts_at", table_name="workshops")
    op.drop_table("workshops")
