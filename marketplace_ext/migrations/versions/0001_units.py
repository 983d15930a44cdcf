"""units and members

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "units",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("slug", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.UniqueConstraint("slug", name="uq_units_slug"),
    )
    op.create_table(
        "members",
        sa.Column("user_name", sa.String(255), primary_key=True),
        sa.Column(
            "unit_id",
            sa.Integer(),
            sa.ForeignKey("units.id", ondelete="CASCADE", name="fk_members_unit_id"),
            nullable=False,
        ),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.Column("added_by", sa.String(255), nullable=False),
    )
    op.create_index("ix_members_unit_id", "members", ["unit_id"])


def downgrade() -> None:
    op.drop_index("ix_members_unit_id", table_name="members")
    op.drop_table("members")
    op.drop_table("units")
