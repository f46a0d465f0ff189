"""tracking: opens, clicks, short links, conversions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 17:30:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)


def upgrade():
    # Plain ADD COLUMN (no batch copy): the contacts' expression indexes stay as they are.
    op.add_column('campaigns', sa.Column('track', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column('contacts', sa.Column('tracking_refused', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('short_links',
    sa.Column('code', sa.String(length=16), nullable=False),
    sa.Column('campaign_id', BIGID, nullable=True),
    sa.Column('contact_id', BIGID, nullable=True),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('clicks', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('last_clicked_at', TS, nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_short_links_campaign_id_campaigns'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_short_links_contact_id_contacts'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_short_links'))
    )
    op.create_index('ix_short_links_campaign_id', 'short_links', ['campaign_id'], unique=False)
    # Campaign reports read the events of one campaign from this index alone (it replaces (campaign_id, kind)).
    op.create_index('ix_message_events_campaign_id_kind_is_bot', 'message_events',
                    ['campaign_id', 'kind', 'is_bot', 'contact_id', 'occurred_at'], unique=False)
    op.drop_index('ix_message_events_campaign_id_kind', table_name='message_events')
    op.create_index('ix_purchases_occurred_at', 'purchases', ['occurred_at'], unique=False)


def downgrade():
    op.drop_index('ix_purchases_occurred_at', table_name='purchases')
    op.create_index('ix_message_events_campaign_id_kind', 'message_events', ['campaign_id', 'kind'], unique=False)
    op.drop_index('ix_message_events_campaign_id_kind_is_bot', table_name='message_events')
    op.drop_index('ix_short_links_campaign_id', table_name='short_links')
    op.drop_table('short_links')
    # SQLite >= 3.35 drops a column in place; a batch copy would lose the expression indexes.
    op.execute('ALTER TABLE contacts DROP COLUMN tracking_refused')
    op.execute('ALTER TABLE campaigns DROP COLUMN track')
