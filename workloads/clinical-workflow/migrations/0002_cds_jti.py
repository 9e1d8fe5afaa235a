"""clinical-workflow: CDS Hooks client JWT ids kept until they expire (replay refused, also after a
restart).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cw_cds_jti',
    sa.Column('key', sa.String(length=600), nullable=False),
    sa.Column('expires', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_index(op.f('ix_cw_cds_jti_expires'), 'cw_cds_jti', ['expires'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_cw_cds_jti_expires'), table_name='cw_cds_jti')
    op.drop_table('cw_cds_jti')
