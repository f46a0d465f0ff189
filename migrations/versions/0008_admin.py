"""admin UI: users.language, indexes of the dashboard (statuses, consent events by date)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 17:30:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)


def upgrade():
    op.add_column('users', sa.Column('language', sa.String(length=8), nullable=True))
    op.create_index('ix_consent_events_recorded_at', 'consent_events', ['recorded_at', 'kind', 'topic_id'],
                    unique=False)
    op.create_index('ix_contacts_statuses', 'contacts', ['email_status', 'sms_status'], unique=False,
                    postgresql_where=sa.text('erased_at IS NULL'), sqlite_where=sa.text('erased_at IS NULL'))


def downgrade():
    op.drop_index('ix_contacts_statuses', table_name='contacts')
    op.drop_index('ix_consent_events_recorded_at', table_name='consent_events')
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_column('language')
