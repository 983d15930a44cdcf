"""federated economy: a project's contribution measure is opt-in (leave-one-out or data weight)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"  # chained after helper A's 0018_fl_slices
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fl_projects") as batch:
        batch.add_column(sa.Column("contribution_measure", sa.String(length=16), nullable=False,
                                   server_default="weight"))


def downgrade() -> None:
    with op.batch_alter_table("fl_projects") as batch:
        batch.drop_column("contribution_measure")
