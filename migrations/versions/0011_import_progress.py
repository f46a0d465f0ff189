"""import progress: bytes read and file size of an import job, shown while it runs

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23 21:00:00

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('import_jobs') as batch:
        batch.add_column(sa.Column('bytes_read', sa.BigInteger(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('bytes_total', sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table('import_jobs') as batch:
        batch.drop_column('bytes_total')
        batch.drop_column('bytes_read')
