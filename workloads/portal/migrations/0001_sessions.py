"""portal: sessions sealed at rest (AES-256-GCM), keyed by the SHA-256 of the cookie value.

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
    op.create_table('portal_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('expires', sa.Float(), nullable=False),
    sa.Column('sealed', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_portal_sessions_expires'), 'portal_sessions', ['expires'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_portal_sessions_expires'), table_name='portal_sessions')
    op.drop_table('portal_sessions')
