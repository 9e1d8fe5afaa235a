"""clinical-workflow: the schema as `create_all` made it before migrations (baseline; existing
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
    op.create_table('cw_audit_outbox',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_table('cw_documents',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('patient', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_cw_documents_patient'), 'cw_documents', ['patient'], unique=False)
    op.create_table('cw_forward_outbox',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('patient', sa.String(length=200), nullable=False),
    sa.Column('resource', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_index(op.f('ix_cw_forward_outbox_state'), 'cw_forward_outbox', ['state'], unique=False)
    op.create_table('cw_inbox',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('cw_news2',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('patient', sa.String(length=200), nullable=False),
    sa.Column('issued', sa.Float(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('risk', sa.String(length=16), nullable=False),
    sa.Column('resource', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_cw_news2_patient'), 'cw_news2', ['patient'], unique=False)
    op.create_table('cw_provenance',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('resource', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_cw_provenance_target'), 'cw_provenance', ['target'], unique=False)
    op.create_table('cw_tasks',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('workflow_id', sa.String(length=64), nullable=False),
    sa.Column('step', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=True),
    sa.Column('patient', sa.String(length=200), nullable=False),
    sa.Column('resource', sa.JSON(), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_cw_tasks_patient'), 'cw_tasks', ['patient'], unique=False)
    op.create_index(op.f('ix_cw_tasks_status'), 'cw_tasks', ['status'], unique=False)
    op.create_index(op.f('ix_cw_tasks_workflow_id'), 'cw_tasks', ['workflow_id'], unique=False)
    op.create_table('cw_vitals',
    sa.Column('patient', sa.String(length=200), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('patient')
    )
    op.create_table('cw_workflows',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('process', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('patient', sa.String(length=200), nullable=False),
    sa.Column('state', sa.Text(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('due', sa.Float(), nullable=True),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_cw_workflows_active'), 'cw_workflows', ['active'], unique=False)
    op.create_index(op.f('ix_cw_workflows_due'), 'cw_workflows', ['due'], unique=False)
    op.create_index(op.f('ix_cw_workflows_key'), 'cw_workflows', ['key'], unique=False)
    op.create_index(op.f('ix_cw_workflows_patient'), 'cw_workflows', ['patient'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_cw_workflows_patient'), table_name='cw_workflows')
    op.drop_index(op.f('ix_cw_workflows_key'), table_name='cw_workflows')
    op.drop_index(op.f('ix_cw_workflows_due'), table_name='cw_workflows')
    op.drop_index(op.f('ix_cw_workflows_active'), table_name='cw_workflows')
    op.drop_table('cw_workflows')
    op.drop_table('cw_vitals')
    op.drop_index(op.f('ix_cw_tasks_workflow_id'), table_name='cw_tasks')
    op.drop_index(op.f('ix_cw_tasks_status'), table_name='cw_tasks')
    op.drop_index(op.f('ix_cw_tasks_patient'), table_name='cw_tasks')
    op.drop_table('cw_tasks')
    op.drop_index(op.f('ix_cw_provenance_target'), table_name='cw_provenance')
    op.drop_table('cw_provenance')
    op.drop_index(op.f('ix_cw_news2_patient'), table_name='cw_news2')
    op.drop_table('cw_news2')
    op.drop_table('cw_inbox')
    op.drop_index(op.f('ix_cw_forward_outbox_state'), table_name='cw_forward_outbox')
    op.drop_table('cw_forward_outbox')
    op.drop_index(op.f('ix_cw_documents_patient'), table_name='cw_documents')
    op.drop_table('cw_documents')
    op.drop_table('cw_audit_outbox')
