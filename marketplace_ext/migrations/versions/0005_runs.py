"""runs: the persistent papermill run queue

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=True),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("entitlement_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("data_kind", sa.String(length=16), nullable=False),
        sa.Column("data_sha256", sa.String(length=64), nullable=True),
        sa.Column("data_name", sa.String(length=255), nullable=True),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("cells_done", sa.Integer(), nullable=False),
        sa.Column("cells_total", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("output_sha256", sa.String(length=64), nullable=True),
        sa.Column("html_sha256", sa.String(length=64), nullable=True),
        sa.Column("artifacts", sa.Text(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["entitlement_id"], ["entitlements.id"], name="fk_runs_entitlement_id"
        ),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name="fk_runs_product_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_runs_unit_id"),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], name="fk_runs_version_id"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_product_id"), ["product_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_unit_id"), ["unit_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_unit_id"))
        batch_op.drop_index(batch_op.f("ix_runs_status"))
        batch_op.drop_index(batch_op.f("ix_runs_product_id"))

    op.drop_table("runs")
