"""ingest: the schema as `create_all` made it before migrations (baseline; existing
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
    op.create_table('messages',
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('device', sa.String(length=256), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('data_class', sa.String(length=32), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('site', 'id')
    )
    op.create_index('messages_device_seq', 'messages', ['device', 'seq'], unique=False)


def downgrade() -> None:
    op.drop_index('messages_device_seq', table_name='messages')
    op.drop_table('messages')
