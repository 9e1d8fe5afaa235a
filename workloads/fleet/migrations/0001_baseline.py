"""fleet: the schema as `create_all` made it before migrations (baseline; existing
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
    op.create_table('devices',
    sa.Column('id', sa.String(length=120), nullable=False),
    sa.Column('udi', sa.String(length=200), nullable=False),
    sa.Column('udi_di', sa.String(length=14), nullable=False),
    sa.Column('serial', sa.String(length=40), nullable=False),
    sa.Column('lot', sa.String(length=40), nullable=True),
    sa.Column('expiry', sa.Date(), nullable=True),
    sa.Column('manufactured', sa.Date(), nullable=True),
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('hardware', sa.String(length=64), nullable=False),
    sa.Column('rollout_group', sa.String(length=64), nullable=False),
    sa.Column('maintenance_days', sa.Integer(), nullable=False),
    sa.Column('last_maintenance', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cert_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('onboarded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('last_heartbeat', sa.DateTime(timezone=True), nullable=True),
    sa.Column('telemetry', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_devices_site'), 'devices', ['site'], unique=False)
    op.create_index(op.f('ix_devices_udi_di'), 'devices', ['udi_di'], unique=False)
    op.create_table('device_software',
    sa.Column('device', sa.String(length=120), nullable=False),
    sa.Column('component', sa.String(length=120), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('sbom', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['device'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('device', 'component')
    )


def downgrade() -> None:
    op.drop_table('device_software')
    op.drop_index(op.f('ix_devices_udi_di'), table_name='devices')
    op.drop_index(op.f('ix_devices_site'), table_name='devices')
    op.drop_table('devices')
