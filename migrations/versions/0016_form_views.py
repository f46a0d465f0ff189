"""form views: a counter per form, UTC day and where it was shown (hosted page, inline, popup)

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-24 03:45:00

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    op.create_table('form_views',
    sa.Column('form_id', BIGID, nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.Column('views', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['form_id'], ['forms.id'], name=op.f('fk_form_views_form_id_forms'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('form_id', 'day', 'source', name=op.f('pk_form_views'))
    )


def downgrade():
    op.drop_table('form_views')
