"""opt-in: signup forms

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:10:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)


def upgrade():
    op.create_table('forms',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('slug', sa.String(length=100), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('fields', JSON, nullable=False),
    sa.Column('attributes', JSON, nullable=False),
    sa.Column('channels', JSON, nullable=False),
    sa.Column('topics', JSON, nullable=False),
    sa.Column('double_opt_in', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('consent_text', sa.Text(), server_default='', nullable=False),
    sa.Column('consent_version', sa.String(length=50), server_default='1', nullable=False),
    sa.Column('redirect_url', sa.String(length=1000), nullable=True),
    sa.Column('confirm_redirect_url', sa.String(length=1000), nullable=True),
    sa.Column('allowed_origins', JSON, nullable=False),
    sa.Column('popup', JSON, nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_forms')),
    sa.UniqueConstraint('slug', name=op.f('uq_forms_slug'))
    )


def downgrade():
    op.drop_table('forms')
