"""federated enrolment: members approved by the initiator (or an allow-list), units' Ed25519
keys signing members' X25519 keys

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

Members that joined before this revision are kept as ``approved`` (they took part already);
their X25519 keys carry no signature, so clients will not wrap a key for them until they
register their key again, signed.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fl_projects") as batch:
        batch.add_column(sa.Column("allow_list", sa.Text(), nullable=True))
    with op.batch_alter_table("fl_members") as batch:
        batch.add_column(sa.Column("status", sa.String(length=16), nullable=False,
                                   server_default="approved"))
        batch.add_column(sa.Column("decided_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("decided_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("key_signature", sa.String(length=128), nullable=True))
    op.create_table(
        "fl_unit_keys",
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("registered_by", sa.String(length=255), nullable=False),
        sa.Column("registered_at", sa.DateTime(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_fl_unit_keys_unit_id"),
        sa.PrimaryKeyConstraint("unit_id"),
    )


def downgrade() -> None:
    op.drop_table("fl_unit_keys")
    with op.batch_alter_table("fl_members") as batch:
        batch.drop_column("key_signature")
        batch.drop_column("decided_at")
        batch.drop_column("decided_by")
        batch.drop_column("status")
    with op.batch_alter_table("fl_projects") as batch:
        batch.drop_column("allow_list")
