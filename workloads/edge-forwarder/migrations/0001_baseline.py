"""edge-forwarder outbox: the schema as its raw sqlite3 DDL made it before migrations (baseline;
databases are stamped at this revision, not rebuilt).

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
    op.create_table('counters',
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('outbox',
    sa.Column('pos', sa.Integer(), autoincrement=True, nullable=True),
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('data_class', sa.Text(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('received_at', sa.REAL(), nullable=False),
    sa.PrimaryKeyConstraint('pos'),
    sa.UniqueConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_table('refused',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=True),
    sa.Column('id', sa.Text(), nullable=True),
    sa.Column('device', sa.Text(), nullable=True),
    sa.Column('data_class', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=True),
    sa.Column('at', sa.REAL(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sqlite_autoincrement=True
    )


def downgrade() -> None:
    op.drop_table('refused')
    op.drop_table('outbox')
    op.drop_table('counters')
