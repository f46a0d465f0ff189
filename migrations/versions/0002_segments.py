"""segments, message events (engagement), RFM indexes on contacts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:00:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
# The customers RFM scores rank (see segments/rfm.py); partial, so non-buyers cost nothing.
CUSTOMER = 'purchase_count > 0 AND last_purchase_at IS NOT NULL AND erased_at IS NULL'
RFM_INDEXES = (('ix_contacts_rfm_recency', 'last_purchase_at'), ('ix_contacts_rfm_frequency', 'purchase_count'),
               ('ix_contacts_rfm_monetary', 'purchase_total'))


def upgrade():
    op.create_table('segments',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('rules', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_segments')),
    sa.UniqueConstraint('name', name=op.f('uq_segments_name'))
    )
    op.create_table('message_events',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('contact_id', BIGID, nullable=False),
    sa.Column('campaign_id', sa.BigInteger(), nullable=True),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('is_bot', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('data', JSON, nullable=False),
    sa.CheckConstraint("channel IN ('email', 'sms')", name=op.f('ck_message_events_channel')),
    sa.CheckConstraint("kind IN ('sent', 'delivered', 'opened', 'clicked', 'bounced', 'complained', 'unsubscribed')",
                       name=op.f('ck_message_events_kind')),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_message_events_contact_id_contacts'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_message_events'))
    )
    with op.batch_alter_table('message_events', schema=None) as batch_op:
        batch_op.create_index('ix_message_events_contact_id_kind_occurred_at', ['contact_id', 'kind', 'occurred_at'],
                              unique=False)
        batch_op.create_index('ix_message_events_campaign_id_kind', ['campaign_id', 'kind'], unique=False)
    for name, column in RFM_INDEXES:
        op.create_index(name, 'contacts', [column, 'id'], unique=False,
                        postgresql_where=sa.text(CUSTOMER), sqlite_where=sa.text(CUSTOMER))


def downgrade():
    for name, _ in reversed(RFM_INDEXES):
        op.drop_index(name, table_name='contacts')
    with op.batch_alter_table('message_events', schema=None) as batch_op:
        batch_op.drop_index('ix_message_events_campaign_id_kind')
        batch_op.drop_index('ix_message_events_contact_id_kind_occurred_at')
    op.drop_table('message_events')
    op.drop_table('segments')
