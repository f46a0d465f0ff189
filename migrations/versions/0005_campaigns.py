"""campaigns and deliveries

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 10:20:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)


def upgrade():
    op.create_table('campaigns',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('segment_id', BIGID, nullable=True),
    sa.Column('topic_id', BIGID, nullable=True),
    sa.Column('exclude_segment_ids', JSON, nullable=False),
    sa.Column('sender', sa.String(length=300), nullable=True),
    sa.Column('subject', sa.String(length=998), nullable=True),
    sa.Column('html', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='draft', nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('send_at', TS, nullable=True),
    sa.Column('started_at', TS, nullable=True),
    sa.Column('finished_at', TS, nullable=True),
    sa.Column('targeted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('author_id', BIGID, nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint("channel IN ('email', 'sms')", name=op.f('ck_campaigns_channel')),
    sa.CheckConstraint("status IN ('draft', 'scheduled', 'sending', 'paused', 'sent', 'cancelled')",
                       name=op.f('ck_campaigns_status')),
    sa.ForeignKeyConstraint(['segment_id'], ['segments.id'], name=op.f('fk_campaigns_segment_id_segments'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['topic_id'], ['topics.id'], name=op.f('fk_campaigns_topic_id_topics'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], name=op.f('fk_campaigns_author_id_users'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaigns'))
    )
    op.create_index('ix_campaigns_status_send_at', 'campaigns', ['status', 'send_at'], unique=False)
    op.create_table('deliveries',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('campaign_id', BIGID, nullable=False),
    sa.Column('contact_id', BIGID, nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='queued', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', TS, nullable=True),
    sa.Column('lease_until', TS, nullable=True),
    sa.Column('provider_id', sa.String(length=300), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('sent_at', TS, nullable=True),
    sa.Column('updated_at', TS, nullable=True),
    sa.Column('reclaims', sa.Integer(), server_default='0', nullable=False),
    sa.CheckConstraint("channel IN ('email', 'sms')", name=op.f('ck_deliveries_channel')),
    sa.CheckConstraint("status IN ('queued', 'sending', 'sent', 'delivered', 'undelivered', 'failed', 'bounced', "
                       "'skipped')", name=op.f('ck_deliveries_status')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_deliveries_campaign_id_campaigns'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_deliveries_contact_id_contacts'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    sa.UniqueConstraint('campaign_id', 'contact_id', name='uq_deliveries_campaign_id_contact_id')
    )
    op.create_index('ix_deliveries_campaign_id_status_id', 'deliveries', ['campaign_id', 'status', 'id'], unique=False)
    op.create_index('ix_deliveries_contact_id_sent_at', 'deliveries', ['contact_id', 'sent_at'], unique=False)
    op.create_index('ix_deliveries_provider_id', 'deliveries', ['provider_id'], unique=False)


def downgrade():
    op.drop_table('deliveries')
    op.drop_table('campaigns')
