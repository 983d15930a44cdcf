"""model-to-data: the JSON schema each declared .json output must match

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("m2d_requests") as batch:
        batch.add_column(sa.Column("output_schemas", sa.Text(), nullable=False,
                                   server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("m2d_requests") as batch:
        batch.drop_column("output_schemas")
