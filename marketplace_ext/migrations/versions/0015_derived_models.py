"""catalogue: derived (further-trained) model versions and their lineage

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "derived_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("base_version_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("data_sha256", sa.String(length=64), nullable=True),
        sa.Column("data_rows", sa.BigInteger(), nullable=True),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("bundle_sha256", sa.String(length=64), nullable=True),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"],
                                name="fk_derived_models_product_id"),
        sa.ForeignKeyConstraint(["base_version_id"], ["versions.id"],
                                name="fk_derived_models_base_version_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_derived_models_unit_id"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_derived_models_run_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", name="uq_derived_models_run_id"),
    )
    op.create_index("ix_derived_models_product_id", "derived_models", ["product_id"])
    op.create_index("ix_derived_models_unit_id", "derived_models", ["unit_id"])


def downgrade() -> None:
    op.drop_index("ix_derived_models_unit_id", table_name="derived_models")
    op.drop_index("ix_derived_models_product_id", table_name="derived_models")
    op.drop_table("derived_models")
