"""automation: journeys, steps, runs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 17:30:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)


OLD_KINDS = ("'mailing', 'sms', 'call', 'meeting', 'postal_mailing', 'note', 'signup', 'confirmation', "
             "'unsubscribe', 'preferences', 'import', 'merge', 'erase'")


def _action_kinds(kinds: str) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        op.drop_constraint(op.f('ck_actions_kind'), 'actions', type_='check')
        op.create_check_constraint('kind', 'actions', f"kind IN ({kinds})")
        return
    # SQLite cannot alter a CHECK constraint: batch mode recreates the table.
    with op.batch_alter_table('actions', recreate='always') as batch:
        batch.drop_constraint(op.f('ck_actions_kind'), type_='check')
        batch.create_check_constraint('kind', f"kind IN ({kinds})")


def upgrade():
    op.create_table('automations',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='draft', nullable=False),
    sa.Column('trigger', JSON, nullable=False),
    sa.Column('trigger_type', sa.String(length=16), nullable=False),
    sa.Column('audience', JSON, nullable=True),
    sa.Column('topic_id', BIGID, nullable=True),
    sa.Column('reentry', sa.String(length=20), server_default='per_occurrence', nullable=False),
    sa.Column('sender', sa.String(length=300), nullable=True),
    sa.Column('uses_email', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('uses_sms', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('enabled_at', TS, nullable=True),
    sa.Column('checked_at', TS, nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint("status IN ('draft', 'active', 'paused')", name=op.f('ck_automations_status')),
    sa.CheckConstraint("trigger_type IN ('subscription', 'anniversary', 'purchase', 'winback', 'segment', 'tag', "
                       "'event')", name=op.f('ck_automations_trigger_type')),
    sa.CheckConstraint("reentry IN ('per_occurrence', 'once', 'not_while_active')",
                       name=op.f('ck_automations_reentry')),
    sa.ForeignKeyConstraint(['topic_id'], ['topics.id'], name=op.f('fk_automations_topic_id_topics'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_automations'))
    )
    op.create_table('automation_steps',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('automation_id', BIGID, nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('config', JSON, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.CheckConstraint("kind IN ('email', 'sms', 'wait', 'branch')", name=op.f('ck_automation_steps_kind')),
    sa.ForeignKeyConstraint(['automation_id'], ['automations.id'],
                            name=op.f('fk_automation_steps_automation_id_automations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_automation_steps')),
    sa.UniqueConstraint('automation_id', 'position', name='uq_automation_steps_automation_id_position')
    )
    op.create_table('journey_runs',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('automation_id', BIGID, nullable=False),
    sa.Column('contact_id', BIGID, nullable=False),
    sa.Column('occurrence_key', sa.String(length=200), nullable=False),
    sa.Column('ref_id', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=8), server_default='active', nullable=False),
    sa.Column('step', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_step_at', TS, nullable=True),
    sa.Column('lease_until', TS, nullable=True),
    sa.Column('enqueued_at', TS, nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('exit_reason', sa.String(length=200), nullable=True),
    sa.Column('entered_at', TS, nullable=False),
    sa.Column('finished_at', TS, nullable=True),
    sa.Column('updated_at', TS, nullable=True),
    sa.CheckConstraint("status IN ('active', 'done', 'exited')", name=op.f('ck_journey_runs_status')),
    sa.ForeignKeyConstraint(['automation_id'], ['automations.id'],
                            name=op.f('fk_journey_runs_automation_id_automations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_journey_runs_contact_id_contacts'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journey_runs')),
    sa.UniqueConstraint('automation_id', 'contact_id', 'occurrence_key',
                        name='uq_journey_runs_automation_id_contact_id_occurrence_key')
    )
    op.create_index('ix_journey_runs_status_next_step_at', 'journey_runs', ['status', 'next_step_at'], unique=False)
    op.create_index('ix_journey_runs_contact_id_status', 'journey_runs', ['contact_id', 'status'], unique=False)
    op.create_table('journey_steps',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('run_id', BIGID, nullable=False),
    sa.Column('automation_id', BIGID, nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('at', TS, nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['journey_runs.id'], name=op.f('fk_journey_steps_run_id_journey_runs'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['automation_id'], ['automations.id'],
                            name=op.f('fk_journey_steps_automation_id_automations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journey_steps')),
    sa.UniqueConstraint('run_id', 'position', name='uq_journey_steps_run_id_position')
    )
    op.create_index('ix_journey_steps_automation_id_position', 'journey_steps', ['automation_id', 'position'],
                    unique=False)
    op.create_table('automation_events',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('contact_id', BIGID, nullable=False),
    sa.Column('data', JSON, nullable=False),
    sa.Column('occurred_at', TS, nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_automation_events_contact_id_contacts'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_automation_events'))
    )
    op.create_index('ix_automation_events_name_created_at', 'automation_events', ['name', 'created_at'],
                    unique=False)
    # A journey step's message is a delivery too: no campaign, unique per (run, step).
    with op.batch_alter_table('deliveries') as batch:
        batch.alter_column('campaign_id', existing_type=BIGID, nullable=True)
        batch.add_column(sa.Column('journey_run_id', BIGID, nullable=True))
        batch.add_column(sa.Column('journey_step', sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f('fk_deliveries_journey_run_id_journey_runs'), 'journey_runs',
                                 ['journey_run_id'], ['id'], ondelete='CASCADE')
        batch.create_unique_constraint('uq_deliveries_journey_run_id_journey_step',
                                       ['journey_run_id', 'journey_step'])
    _action_kinds(OLD_KINDS + ", 'automation'")


def downgrade():
    op.execute("DELETE FROM actions WHERE kind = 'automation'")
    _action_kinds(OLD_KINDS)
    op.execute("DELETE FROM deliveries WHERE campaign_id IS NULL")
    with op.batch_alter_table('deliveries') as batch:
        batch.drop_constraint('uq_deliveries_journey_run_id_journey_step', type_='unique')
        batch.drop_constraint(op.f('fk_deliveries_journey_run_id_journey_runs'), type_='foreignkey')
        batch.drop_column('journey_step')
        batch.drop_column('journey_run_id')
        batch.alter_column('campaign_id', existing_type=BIGID, nullable=False)
    op.drop_table('automation_events')
    op.drop_table('journey_steps')
    op.drop_table('journey_runs')
    op.drop_table('automation_steps')
    op.drop_table('automations')
