"""federated economy: projects over data products, reward pools, settlements, co-owned models

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "product_shares",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("basis_points", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"],
                                name="fk_product_shares_product_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_product_shares_unit_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("product_id", "unit_id", name="uq_product_shares_unit"),
    )
    op.create_index("ix_product_shares_product_id", "product_shares", ["product_id"])
    op.create_table(
        "fl_project_products",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["fl_projects.id"],
                                name="fk_fl_project_products_project_id"),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"],
                                name="fk_fl_project_products_product_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "product_id", name="uq_fl_project_products"),
    )
    op.create_index("ix_fl_project_products_project_id", "fl_project_products", ["project_id"])
    op.create_index("ix_fl_project_products_product_id", "fl_project_products", ["product_id"])
    op.create_table(
        "fl_pools",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("funded", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["fl_projects.id"],
                                name="fk_fl_pools_project_id"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_fl_pools_account_id"),
        sa.PrimaryKeyConstraint("project_id"),
    )
    op.create_table(
        "fl_settlements",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("measure", sa.String(length=32), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("shares", sa.Text(), nullable=False),
        sa.Column("paid", sa.Text(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", sa.Integer(), nullable=True),
        sa.Column("decided_by", sa.String(length=255), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["fl_projects.id"],
                                name="fk_fl_settlements_project_id"),
        sa.ForeignKeyConstraint(["transfer_id"], ["transfers.id"],
                                name="fk_fl_settlements_transfer_id"),
        sa.PrimaryKeyConstraint("project_id"),
    )
    op.create_table(
        "fl_model_products",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("published_by", sa.String(length=255), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["fl_projects.id"],
                                name="fk_fl_model_products_project_id"),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"],
                                name="fk_fl_model_products_product_id"),
        sa.PrimaryKeyConstraint("project_id"),
        sa.UniqueConstraint("product_id", name="uq_fl_model_products_product"),
    )


def downgrade() -> None:
    op.drop_table("fl_model_products")
    op.drop_table("fl_settlements")
    op.drop_table("fl_pools")
    op.drop_index("ix_fl_project_products_product_id", table_name="fl_project_products")
    op.drop_index("ix_fl_project_products_project_id", table_name="fl_project_products")
    op.drop_table("fl_project_products")
    op.drop_index("ix_product_shares_product_id", table_name="product_shares")
    op.drop_table("product_shares")
