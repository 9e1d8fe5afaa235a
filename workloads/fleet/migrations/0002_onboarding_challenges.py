"""fleet: onboarding challenges in the database (a nonce digest per device, wall-clock expiry), so
they survive restarts and every replica redeems the same challenge once.

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
    op.create_table('onboarding_challenges',
    sa.Column('device', sa.String(length=120), nullable=False),
    sa.Column('nonce_sha256', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['device'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('device')
    )
    op.create_index(op.f('ix_onboarding_challenges_expires_at'), 'onboarding_challenges', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_onboarding_challenges_expires_at'), table_name='onboarding_challenges')
    op.drop_table('onboarding_challenges')
