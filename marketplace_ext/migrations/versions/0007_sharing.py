"""sharing: model-to-data requests and per-product environments

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "m2d_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("requester", sa.String(length=255), nullable=False),
        sa.Column("requester_unit_id", sa.Integer(), nullable=False),
        sa.Column("owner_unit_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("notebook_sha256", sa.String(length=64), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("entitlement_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=255), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("released", sa.Text(), nullable=False),
        sa.Column("withheld", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"],
                                name="fk_m2d_requests_product_id"),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"],
                                name="fk_m2d_requests_version_id"),
        sa.ForeignKeyConstraint(["requester_unit_id"], ["units.id"],
                                name="fk_m2d_requests_requester_unit_id"),
        sa.ForeignKeyConstraint(["owner_unit_id"], ["units.id"],
                                name="fk_m2d_requests_owner_unit_id"),
        sa.ForeignKeyConstraint(["entitlement_id"], ["entitlements.id"],
                                name="fk_m2d_requests_entitlement_id"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_m2d_requests_run_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", name="uq_m2d_requests_run_id"),
    )
    for column in ("product_id", "requester_unit_id", "owner_unit_id", "status"):
        op.create_index(f"ix_m2d_requests_{column}", "m2d_requests", [column])
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("env_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("env_digest")
    for column in ("product_id", "requester_unit_id", "owner_unit_id", "status"):
        op.drop_index(f"ix_m2d_requests_{column}", "m2d_requests")
    op.drop_table("m2d_requests")
