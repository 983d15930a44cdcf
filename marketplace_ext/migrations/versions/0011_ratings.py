"""exchange: ratings and reviews, features, unit types

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

Units made before this revision become provincial companies (what the demo's units are); an
operator changes a unit's type through ``POST api/units/{unit}/type``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("units") as batch:
        batch.add_column(sa.Column("type", sa.String(length=32), nullable=False,
                                   server_default="provincial_company"))
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("reply_by", sa.String(length=255), nullable=True),
        sa.Column("reply_at", sa.DateTime(), nullable=True),
        sa.Column("hidden_reason", sa.Text(), nullable=True),
        sa.Column("hidden_by", sa.String(length=255), nullable=True),
        sa.Column("hidden_at", sa.DateTime(), nullable=True),
        sa.Column("hidden_log_index", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name="fk_reviews_product_id"),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], name="fk_reviews_version_id"),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_reviews_unit_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version_id", "user_name", name="uq_reviews_version_user"),
    )
    op.create_index("ix_reviews_product_id", "reviews", ["product_id"])
    op.create_table(
        "features",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("ends_at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name="fk_features_product_id"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_features_product_id", "features", ["product_id"])


def downgrade() -> None:
    op.drop_index("ix_features_product_id", table_name="features")
    op.drop_table("features")
    op.drop_index("ix_reviews_product_id", table_name="reviews")
    op.drop_table("reviews")
    with op.batch_alter_table("units") as batch:
        batch.drop_column("type")
