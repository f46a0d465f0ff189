"""tracking speed: names of the drained hit batches, the portfolio's covering index

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 21:00:00

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade():
    # One row per batch of buffered hits written to message_events (campaigns/tracking.py): written in
    # the same transaction as the events, so a batch a dead drainer left behind is never written twice.
    op.create_table('tracking_drains',
    sa.Column('batch', sa.String(length=64), nullable=False),
    sa.Column('drained_at', TS, nullable=False),
    sa.PrimaryKeyConstraint('batch', name=op.f('pk_tracking_drains'))
    )
    op.create_index('ix_tracking_drains_drained_at', 'tracking_drains', ['drained_at'], unique=False)
    # The portfolio report reads the customers' RFM columns from this index alone (index-only scans).
    customer = sa.text('purchase_count > 0 AND erased_at IS NULL AND last_purchase_at IS NOT NULL')
    op.create_index('ix_contacts_rfm_portfolio', 'contacts',
                    ['purchase_count', 'last_purchase_at', 'purchase_total', 'id'], unique=False,
                    postgresql_where=customer, sqlite_where=customer)


def downgrade():
    op.drop_index('ix_contacts_rfm_portfolio', table_name='contacts')
    op.drop_index('ix_tracking_drains_drained_at', table_name='tracking_drains')
    op.drop_table('tracking_drains')
