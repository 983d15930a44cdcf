"""private log entries: details, salt and readers beside each entry; legacy entries disclosed
where they were already public (versions that reached the shelf)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

Entries written before this revision keep their leaf (the whole statement): rewriting them
would change every checkpoint the witnesses co-signed. They stay *legacy* entries: ``details``
is NULL, and the service serves their statement to the parties and operators only, like a new
entry's details. A legacy statement that was public anyway (the submission of a version that
reached the shelf, a move onto the shelf) is marked ``disclosed``.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("log_entries") as batch:
        batch.add_column(sa.Column("details", sa.Text(), nullable=True))
        batch.add_column(sa.Column("salt", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("actor", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("parties", sa.Text(), nullable=True))
        batch.add_column(sa.Column("disclosed", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    bind = op.get_bind()
    bind.execute(sa.text(
        "UPDATE log_entries SET disclosed = :yes WHERE kind = 'version_submitted' AND idx IN ("
        " SELECT v.log_index FROM versions v WHERE v.log_index IS NOT NULL AND EXISTS ("
        "  SELECT 1 FROM transitions t WHERE t.version_id = v.id AND t.to_state = 'on_shelf'))"
    ), {"yes": True})
    onto_shelf = [idx for idx, data in bind.execute(sa.text(
        "SELECT idx, data FROM log_entries WHERE kind = 'shelf'"))
        if json.loads(data).get("to_state") == "on_shelf"]
    if onto_shelf:
        bind.execute(sa.text("UPDATE log_entries SET disclosed = :yes WHERE idx = :idx"),
                     [{"yes": True, "idx": idx} for idx in onto_shelf])


def downgrade() -> None:
    with op.batch_alter_table("log_entries") as batch:
        batch.drop_column("disclosed")
        batch.drop_column("parties")
        batch.drop_column("actor")
        batch.drop_column("salt")
        batch.drop_column("details")
