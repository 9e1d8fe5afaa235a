"""pseudonymizer: the schema as `create_all` made it before migrations (baseline; existing
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
    op.create_table('domain_keys',
    sa.Column('domain', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('hmac_ref', sa.String(length=600), nullable=False),
    sa.Column('mapping_ref', sa.String(length=600), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'version')
    )
    op.create_table('domains',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('data_class', sa.String(length=32), nullable=False),
    sa.Column('alphabet', sa.String(length=64), nullable=False),
    sa.Column('length', sa.Integer(), nullable=False),
    sa.Column('reversible', sa.Boolean(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('mappings',
    sa.Column('domain', sa.String(length=64), nullable=False),
    sa.Column('pseudonym', sa.String(length=64), nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'pseudonym')
    )


def downgrade() -> None:
    op.drop_table('mappings')
    op.drop_table('domains')
    op.drop_table('domain_keys')
