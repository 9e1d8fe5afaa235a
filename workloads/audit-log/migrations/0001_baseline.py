"""audit-log: the schema as `create_all` made it before migrations (baseline; existing
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
    op.create_table('audit_checkpoints',
    sa.Column('log', sa.String(length=200), nullable=False),
    sa.Column('size', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('cosigned', sa.Text(), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('log', 'size')
    )
    op.create_table('audit_entries',
    sa.Column('log', sa.String(length=200), nullable=False),
    sa.Column('idx', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('leaf_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('entry', sa.LargeBinary(), nullable=False),
    sa.Column('patient', sa.String(length=256), nullable=True),
    sa.Column('agent', sa.String(length=256), nullable=True),
    sa.Column('recorded', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('log', 'idx')
    )
    op.create_index('audit_entries_agent', 'audit_entries', ['log', 'agent'], unique=False)
    op.create_index('audit_entries_patient', 'audit_entries', ['log', 'patient'], unique=False)
    op.create_index('audit_entries_recorded', 'audit_entries', ['log', 'recorded'], unique=False)


def downgrade() -> None:
    op.drop_index('audit_entries_recorded', table_name='audit_entries')
    op.drop_index('audit_entries_patient', table_name='audit_entries')
    op.drop_index('audit_entries_agent', table_name='audit_entries')
    op.drop_table('audit_entries')
    op.drop_table('audit_checkpoints')
