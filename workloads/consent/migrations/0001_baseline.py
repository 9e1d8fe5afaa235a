"""consent: the schema as `create_all` made it before migrations (baseline; existing
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
    op.create_table('consents',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('patient', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('resource', sa.JSON(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_consents_patient'), 'consents', ['patient'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_consents_patient'), table_name='consents')
    op.drop_table('consents')
