"""federated learning: slices of an aggregate decrypted by members (split decryption)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_slices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("slice", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("submitter", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["fl_members.id"],
                                name="fk_fl_slices_member_id"),
        sa.ForeignKeyConstraint(["round_id"], ["fl_rounds.id"], name="fk_fl_slices_round_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("round_id", "slice", name="uq_fl_slices_round_slice"),
    )


def downgrade() -> None:
    op.drop_table("fl_slices")
