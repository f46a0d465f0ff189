"""dev outbox: messages sent without a provider

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:00:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    op.create_table('outbox_messages',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('to', sa.String(length=254), nullable=False),
    sa.Column('sender', sa.String(length=300), nullable=True),
    sa.Column('subject', sa.String(length=998), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('html', sa.Text(), nullable=True),
    sa.Column('raw', sa.Text(), nullable=True),
    sa.Column('data', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("channel IN ('email', 'sms')", name=op.f('ck_outbox_messages_channel')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_messages'))
    )
    op.create_index('ix_outbox_messages_to_id', 'outbox_messages', ['to', 'id'], unique=False)


def downgrade():
    op.drop_index('ix_outbox_messages_to_id', table_name='outbox_messages')
    op.drop_table('outbox_messages')
