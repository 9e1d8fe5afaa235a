"""durable-publisher (the device adapters' queue to the site broker): the schema as its DDL made it
before migrations (baseline; existing queues are stamped at this revision, not rebuilt).

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=True),
    sa.Column('topic', sa.Text(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('queued_at', sa.REAL(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sqlite_autoincrement=True
    )


def downgrade() -> None:
    op.drop_table('outbox')
