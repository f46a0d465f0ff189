"""tracking rollups: the campaign report's counts kept by triggers; SMS links numbered per campaign

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24 00:00:00

On PostgreSQL, statement triggers on message_events keep five rollup tables exact in the transaction
that inserts, deletes (a contact's deletion cascades) or updates (erasure, merge of duplicates) the
events; the existing events are rolled up here by tracking_rollup_rebuild(). SQLite gets the tables only
(the report computes from the events there).
"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# The events a statement touched, +1 (written) or -1 (gone): the campaigns' opens and clicks.
_ROWS = ("SELECT campaign_id, contact_id, kind, is_bot, occurred_at, data ->> ''url'' AS url, {sign} AS sign "
         "FROM {table} WHERE campaign_id IS NOT NULL AND kind IN (''opened'', ''clicked'')")

ROLLUP_FUNCTION = f"""
CREATE FUNCTION tracking_rollup() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    src text;
    touched boolean;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- (DELETE: a TRUNCATE of these in the same statement as message_events would be refused)
        DELETE FROM tracking_campaign_counts;
        DELETE FROM tracking_contact_counts;
        DELETE FROM tracking_timeline;
        DELETE FROM tracking_links;
        DELETE FROM tracking_link_contacts;
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        src := '{_ROWS.format(sign=1, table="new_rows")}';
    ELSIF TG_OP = 'DELETE' THEN
        src := '{_ROWS.format(sign=-1, table="old_rows")}';
    ELSE
        src := '{_ROWS.format(sign=1, table="new_rows")} UNION ALL {_ROWS.format(sign=-1, table="old_rows")}';
    END IF;
    EXECUTE 'SELECT EXISTS (' || src || ')' INTO touched;
    IF NOT touched THEN
        RETURN NULL;
    END IF;

    -- Per contact, then per campaign: a unique count moves when a contact's count leaves 0 or comes back to it
    -- (the upsert returns the count after the change, whoever wrote before: old = new - delta).
    EXECUTE 'WITH e AS (' || src || '),
    per AS (SELECT campaign_id, contact_id,
                   coalesce(sum(sign) FILTER (WHERE kind = ''opened''), 0)::int AS o,
                   coalesce(sum(sign) FILTER (WHERE kind = ''clicked''), 0)::int AS c
            FROM e WHERE NOT is_bot GROUP BY campaign_id, contact_id),
    up AS (INSERT INTO tracking_contact_counts AS t (campaign_id, contact_id, opens, clicks)
           SELECT campaign_id, contact_id, o, c FROM per WHERE o <> 0 OR c <> 0
           ON CONFLICT (campaign_id, contact_id)
           DO UPDATE SET opens = t.opens + excluded.opens, clicks = t.clicks + excluded.clicks
           RETURNING t.campaign_id, t.contact_id, t.opens, t.clicks),
    moved AS (SELECT up.campaign_id,
                     sum((up.opens + up.clicks > 0)::int - (up.opens - per.o + up.clicks - per.c > 0)::int) AS uo,
                     sum((up.clicks > 0)::int - (up.clicks - per.c > 0)::int) AS uc
              FROM up JOIN per ON per.campaign_id = up.campaign_id AND per.contact_id = up.contact_id
              GROUP BY up.campaign_id),
    tot AS (SELECT campaign_id,
                   coalesce(sum(sign) FILTER (WHERE NOT is_bot AND kind = ''opened''), 0) AS o,
                   coalesce(sum(sign) FILTER (WHERE NOT is_bot AND kind = ''clicked''), 0) AS c,
                   coalesce(sum(sign) FILTER (WHERE is_bot AND kind = ''opened''), 0) AS bo,
                   coalesce(sum(sign) FILTER (WHERE is_bot AND kind = ''clicked''), 0) AS bc
            FROM e GROUP BY campaign_id)
    INSERT INTO tracking_campaign_counts AS t (campaign_id, unique_opens, unique_clicks, opens, clicks,
                                               bot_opens, bot_clicks)
    SELECT tot.campaign_id, coalesce(moved.uo, 0), coalesce(moved.uc, 0), tot.o, tot.c, tot.bo, tot.bc
    FROM tot LEFT JOIN moved ON moved.campaign_id = tot.campaign_id
    ON CONFLICT (campaign_id) DO UPDATE SET
        unique_opens = t.unique_opens + excluded.unique_opens, unique_clicks = t.unique_clicks + excluded.unique_clicks,
        opens = t.opens + excluded.opens, clicks = t.clicks + excluded.clicks,
        bot_opens = t.bot_opens + excluded.bot_opens, bot_clicks = t.bot_clicks + excluded.bot_clicks';

    -- The timeline: hours since the campaign's start for 48 hours, then days (as campaigns/reports.py).
    EXECUTE 'WITH e AS (' || src || ')
    INSERT INTO tracking_timeline AS t (campaign_id, origin, bucket, opens, clicks)
    SELECT e.campaign_id, coalesce(k.started_at, to_timestamp(0)),
           CASE WHEN k.started_at IS NULL OR e.occurred_at < k.started_at THEN -1
                WHEN e.occurred_at < k.started_at + interval ''48 hours''
                    THEN floor(extract(epoch FROM e.occurred_at - k.started_at) / 3600)::int
                ELSE 48 + floor(extract(epoch FROM e.occurred_at - (k.started_at + interval ''48 hours'')) / 86400)::int
           END,
           coalesce(sum(e.sign) FILTER (WHERE e.kind = ''opened''), 0),
           coalesce(sum(e.sign) FILTER (WHERE e.kind = ''clicked''), 0)
    FROM e LEFT JOIN campaigns k ON k.id = e.campaign_id
    WHERE NOT e.is_bot
    GROUP BY 1, 2, 3
    ON CONFLICT (campaign_id, origin, bucket)
    DO UPDATE SET opens = t.opens + excluded.opens, clicks = t.clicks + excluded.clicks';

    -- Clicks per URL, and the contacts who clicked it.
    EXECUTE 'WITH e AS (' || src || '),
    per AS (SELECT campaign_id, coalesce(md5(url), ''-'') AS url_key, min(url) AS url, contact_id, sum(sign)::int AS n
            FROM e WHERE kind = ''clicked'' AND NOT is_bot GROUP BY 1, 2, 4),
    up AS (INSERT INTO tracking_link_contacts AS t (campaign_id, url_key, contact_id, clicks)
           SELECT campaign_id, url_key, contact_id, n FROM per WHERE n <> 0
           ON CONFLICT (campaign_id, url_key, contact_id) DO UPDATE SET clicks = t.clicks + excluded.clicks
           RETURNING t.campaign_id, t.url_key, t.contact_id, t.clicks),
    moved AS (SELECT up.campaign_id, up.url_key, sum((up.clicks > 0)::int - (up.clicks - per.n > 0)::int) AS u
              FROM up JOIN per ON per.campaign_id = up.campaign_id AND per.url_key = up.url_key
                               AND per.contact_id = up.contact_id
              GROUP BY 1, 2),
    tot AS (SELECT campaign_id, url_key, min(url) AS url, sum(n) AS n FROM per GROUP BY 1, 2)
    INSERT INTO tracking_links AS t (campaign_id, url_key, url, clicks, unique_clicks)
    SELECT tot.campaign_id, tot.url_key, tot.url, tot.n, coalesce(moved.u, 0)
    FROM tot LEFT JOIN moved ON moved.campaign_id = tot.campaign_id AND moved.url_key = tot.url_key
    ON CONFLICT (campaign_id, url_key)
    DO UPDATE SET clicks = t.clicks + excluded.clicks, unique_clicks = t.unique_clicks + excluded.unique_clicks';
    RETURN NULL;
END
$fn$
"""

TRIGGERS = (
    "CREATE TRIGGER tracking_rollup_insert AFTER INSERT ON message_events REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION tracking_rollup()",
    "CREATE TRIGGER tracking_rollup_delete AFTER DELETE ON message_events REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION tracking_rollup()",
    "CREATE TRIGGER tracking_rollup_update AFTER UPDATE ON message_events "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tracking_rollup()",
    "CREATE TRIGGER tracking_rollup_truncate AFTER TRUNCATE ON message_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION tracking_rollup()",
)

# The rollups computed afresh from the events already written (by plain aggregates: the trigger's upserts
# would take far longer on millions of events); also after a bulk load with triggers off.
REBUILD_FUNCTION = """
CREATE FUNCTION tracking_rollup_rebuild() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM tracking_campaign_counts;
    DELETE FROM tracking_contact_counts;
    DELETE FROM tracking_timeline;
    DELETE FROM tracking_links;
    DELETE FROM tracking_link_contacts;
    CREATE TEMP TABLE tracking_rebuild ON COMMIT DROP AS
        SELECT campaign_id, contact_id, kind, is_bot, occurred_at, data ->> 'url' AS url
        FROM message_events WHERE campaign_id IS NOT NULL AND kind IN ('opened', 'clicked');
    INSERT INTO tracking_contact_counts (campaign_id, contact_id, opens, clicks)
        SELECT campaign_id, contact_id, count(*) FILTER (WHERE kind = 'opened'), count(*) FILTER (WHERE kind = 'clicked')
        FROM tracking_rebuild WHERE NOT is_bot GROUP BY campaign_id, contact_id;
    INSERT INTO tracking_campaign_counts (campaign_id, unique_opens, unique_clicks, opens, clicks, bot_opens, bot_clicks)
        SELECT e.campaign_id, coalesce(u.uo, 0), coalesce(u.uc, 0), e.o, e.c, e.bo, e.bc
        FROM (SELECT campaign_id,
                     count(*) FILTER (WHERE NOT is_bot AND kind = 'opened') AS o,
                     count(*) FILTER (WHERE NOT is_bot AND kind = 'clicked') AS c,
                     count(*) FILTER (WHERE is_bot AND kind = 'opened') AS bo,
                     count(*) FILTER (WHERE is_bot AND kind = 'clicked') AS bc
              FROM tracking_rebuild GROUP BY campaign_id) e
        LEFT JOIN (SELECT campaign_id, count(*) AS uo, count(*) FILTER (WHERE clicks > 0) AS uc
                   FROM tracking_contact_counts GROUP BY campaign_id) u ON u.campaign_id = e.campaign_id;
    INSERT INTO tracking_timeline (campaign_id, origin, bucket, opens, clicks)
        SELECT e.campaign_id, coalesce(k.started_at, to_timestamp(0)),
               CASE WHEN k.started_at IS NULL OR e.occurred_at < k.started_at THEN -1
                    WHEN e.occurred_at < k.started_at + interval '48 hours'
                        THEN floor(extract(epoch FROM e.occurred_at - k.started_at) / 3600)::int
                    ELSE 48 + floor(extract(epoch FROM e.occurred_at - (k.started_at + interval '48 hours')) / 86400)::int
               END,
               count(*) FILTER (WHERE e.kind = 'opened'), count(*) FILTER (WHERE e.kind = 'clicked')
        FROM tracking_rebuild e LEFT JOIN campaigns k ON k.id = e.campaign_id
        WHERE NOT e.is_bot GROUP BY 1, 2, 3;
    INSERT INTO tracking_link_contacts (campaign_id, url_key, contact_id, clicks)
        SELECT campaign_id, coalesce(md5(url), '-'), contact_id, count(*)
        FROM tracking_rebuild WHERE kind = 'clicked' AND NOT is_bot GROUP BY 1, 2, 3;
    INSERT INTO tracking_links (campaign_id, url_key, url, clicks, unique_clicks)
        SELECT campaign_id, coalesce(md5(url), '-'), min(url), count(*), count(DISTINCT contact_id)
        FROM tracking_rebuild WHERE kind = 'clicked' AND NOT is_bot GROUP BY 1, 2;
    DROP TABLE tracking_rebuild;
END
$fn$
"""


def upgrade():
    op.create_table('sms_links',
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.SmallInteger(), nullable=False),
    sa.Column('url_hash', sa.String(length=64), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_sms_links_campaign_id_campaigns'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'position', name=op.f('pk_sms_links')),
    sa.UniqueConstraint('campaign_id', 'url_hash', name=op.f('uq_sms_links_campaign_id_url_hash'))
    )
    with op.batch_alter_table('short_links') as batch:
        batch.alter_column('code', existing_type=sa.String(length=16), type_=sa.String(length=32),
                           existing_nullable=False)

    op.create_table('tracking_campaign_counts',
    sa.Column('campaign_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('unique_opens', sa.BigInteger(), nullable=False),
    sa.Column('unique_clicks', sa.BigInteger(), nullable=False),
    sa.Column('opens', sa.BigInteger(), nullable=False),
    sa.Column('clicks', sa.BigInteger(), nullable=False),
    sa.Column('bot_opens', sa.BigInteger(), nullable=False),
    sa.Column('bot_clicks', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', name=op.f('pk_tracking_campaign_counts'))
    )
    op.create_table('tracking_contact_counts',
    sa.Column('campaign_id', sa.BigInteger(), nullable=False),
    sa.Column('contact_id', sa.BigInteger(), nullable=False),
    sa.Column('opens', sa.Integer(), nullable=False),
    sa.Column('clicks', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'contact_id', name=op.f('pk_tracking_contact_counts'))
    )
    op.create_table('tracking_timeline',
    sa.Column('campaign_id', sa.BigInteger(), nullable=False),
    sa.Column('origin', sa.DateTime(timezone=True), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('opens', sa.BigInteger(), nullable=False),
    sa.Column('clicks', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'origin', 'bucket', name=op.f('pk_tracking_timeline'))
    )
    op.create_table('tracking_links',
    sa.Column('campaign_id', sa.BigInteger(), nullable=False),
    sa.Column('url_key', sa.String(length=32), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('clicks', sa.BigInteger(), nullable=False),
    sa.Column('unique_clicks', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'url_key', name=op.f('pk_tracking_links'))
    )
    op.create_table('tracking_link_contacts',
    sa.Column('campaign_id', sa.BigInteger(), nullable=False),
    sa.Column('url_key', sa.String(length=32), nullable=False),
    sa.Column('contact_id', sa.BigInteger(), nullable=False),
    sa.Column('clicks', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'url_key', 'contact_id', name=op.f('pk_tracking_link_contacts'))
    )
    # Attribution's two lookups per purchase, down an index alone (campaigns/tracking_models.py).
    human_click = "kind = 'clicked' AND is_bot IS false AND campaign_id IS NOT NULL"
    op.create_index('ix_message_events_human_clicks', 'message_events', ['contact_id', 'occurred_at', 'id', 'campaign_id'],
                    unique=False, postgresql_where=sa.text(human_click), sqlite_where=sa.text(human_click))
    sent = "status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL"
    op.create_index('ix_deliveries_contact_id_sent', 'deliveries', ['contact_id', 'sent_at', 'id', 'campaign_id'],
                    unique=False, postgresql_where=sa.text(sent), sqlite_where=sa.text(sent))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(ROLLUP_FUNCTION)
        op.execute(REBUILD_FUNCTION)
        for statement in TRIGGERS:
            op.execute(statement)
        op.execute("SELECT tracking_rollup_rebuild()")


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        for name in ('insert', 'delete', 'update', 'truncate'):
            op.execute(f'DROP TRIGGER tracking_rollup_{name} ON message_events')
        op.execute('DROP FUNCTION tracking_rollup()')
        op.execute('DROP FUNCTION tracking_rollup_rebuild()')
    op.drop_index('ix_deliveries_contact_id_sent', table_name='deliveries')
    op.drop_index('ix_message_events_human_clicks', table_name='message_events')
    for table in ('tracking_link_contacts', 'tracking_links', 'tracking_timeline', 'tracking_contact_counts',
                  'tracking_campaign_counts', 'sms_links'):
        op.drop_table(table)
    with op.batch_alter_table('short_links') as batch:
        batch.alter_column('code', existing_type=sa.String(length=32), type_=sa.String(length=16),
                           existing_nullable=False)
