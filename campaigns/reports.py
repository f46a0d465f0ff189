"""The campaign report: what happened after sending, by SQL aggregates (no row reaches Python).

    delivered       deliveries sent or delivered (SMS: not those the carrier reported undelivered)
    bounced         deliveries refused by the recipient's server
    unique_opens    contacts with a human open — or a human click (a click proves the open when
                    images were blocked); bot and prefetch events (is_bot) never count
    unique_clicks   contacts with a human click
    open_rate, click_rate (CTR), click_to_open: over delivered (and over unique_opens)
    unsubscribes    contacts who unsubscribed through this campaign's link
    conversions     contacts with a purchase credited to the campaign; purchases, revenue
    timeline        human opens and clicks: hour by hour for the first 48 hours, then day by day
    top_links       the most clicked URLs (human clicks, unique contacts)

On PostgreSQL, a report over all time (no `start`/`end`) reads the opens and clicks from rollups kept
by triggers on message_events (campaigns/tracking_models.py, migration 0012): the same figures, from a few
rows instead of the campaign's events. A range, or SQLite, computes them from the events.

Attribution (last touch): a purchase is credited to the campaign of the contact's latest human
click in the CONVERSION_WINDOW_DAYS before it; without a click, to the campaign of the latest
message sent to the contact in that window. Computed at report time, so changing the window
changes past reports too.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from campaigns.models import Campaign, Delivery
from campaigns.tracking_models import TrackingCampaignCount, TrackingLink, TrackingTimeline
from contacts.models import Purchase
from envoi.errors import NotFound
from envoi.extensions import db
from envoi.types import utcnow
from segments.models import MessageEvent

D = Delivery.__table__
E = MessageEvent.__table__
P = Purchase.__table__
RC, RL, RT = TrackingCampaignCount.__table__, TrackingLink.__table__, TrackingTimeline.__table__
SENT = ("sent", "delivered", "undelivered")
DELIVERED = ("sent", "delivered")
HOURLY = 48
TOP_LINKS = 10


# ---------------------------------------------------------------- SQL helpers shared with contacts/kpis.py

def dialect() -> str:
    return db.session.get_bind().dialect.name


def epoch(col) -> sa.ColumnElement:
    """Seconds since 1970 of a timestamp column, as a number, on either backend."""
    if dialect() == "postgresql":
        return sa.extract("epoch", col)
    return sa.cast(sa.func.strftime("%s", col), sa.Integer)


def minus_days(col, days: int) -> sa.ColumnElement:
    """`col - days` on the column (the other side of the comparison keeps its index)."""
    if dialect() == "postgresql":
        return col - sa.func.make_interval(0, 0, 0, int(days))
    return sa.func.datetime(col, f"-{int(days)} days")


def tune_for_report() -> None:
    """PostgreSQL, for the rest of this transaction: no JIT (compiling the plan of a report costs
    more than running it: 0.4 s of 1.2 s for the conversions) and room to hash a campaign's
    contacts in memory (a count of distinct contacts otherwise sorts on disk)."""
    if dialect() == "postgresql":
        db.session.execute(sa.text("SET LOCAL jit = off"))
        db.session.execute(sa.text("SET LOCAL work_mem = '64MB'"))


def ratio(a, b) -> float | None:
    return round(a / b, 4) if b else None


def window_days() -> int:
    return int(current_app.config.get("CONVERSION_WINDOW_DAYS", 7))


def attributed_campaign(purchase=P, days: int | None = None) -> sa.ColumnElement:
    """The campaign a purchase row is credited to (NULL: none), as a correlated scalar subquery."""
    days = window_days() if days is None else days
    since = minus_days(purchase.c.occurred_at, days)
    click = (sa.select(E.c.campaign_id)
             .where(E.c.contact_id == purchase.c.contact_id, E.c.kind == "clicked", E.c.is_bot.is_(sa.false()),
                    E.c.campaign_id.isnot(None), E.c.occurred_at <= purchase.c.occurred_at, E.c.occurred_at >= since)
             .order_by(E.c.occurred_at.desc(), E.c.id.desc()).limit(1).scalar_subquery())
    sent = (sa.select(D.c.campaign_id)
            .where(D.c.contact_id == purchase.c.contact_id, D.c.status.in_(SENT), D.c.sent_at.isnot(None),
                   D.c.sent_at <= purchase.c.occurred_at, D.c.sent_at >= since)
            .order_by(D.c.sent_at.desc(), D.c.id.desc()).limit(1).scalar_subquery())
    return sa.func.coalesce(click, sent)


def _in_range(col, start: datetime | None, end: datetime | None) -> list:
    where = []
    if start is not None:
        where.append(col >= start)
    if end is not None:
        where.append(col < end)
    return where


# ---------------------------------------------------------------- the report

def campaign_report(campaign_id: int, start: datetime | None = None, end: datetime | None = None) -> dict:
    """Every figure of one campaign; `start`/`end` bound the events and purchases counted."""
    if not isinstance(campaign_id, int) or isinstance(campaign_id, bool) or not 0 < campaign_id < 2**63:
        raise NotFound("campaign not found")
    campaign = db.session.execute(sa.select(Campaign.id, Campaign.name, Campaign.channel, Campaign.status,
                                            Campaign.started_at, Campaign.finished_at, Campaign.track)
                                  .where(Campaign.id == campaign_id)).one_or_none()
    if campaign is None:
        raise NotFound("campaign not found")
    tune_for_report()

    # Counts per status: an index-only scan of (campaign_id, status, id).
    by_status = dict(db.session.execute(sa.select(D.c.status, sa.func.count())
                                        .where(D.c.campaign_id == campaign_id).group_by(D.c.status)).all())
    sent = sum(by_status.get(s, 0) for s in SENT)
    delivered = sum(by_status.get(s, 0) for s in DELIVERED)
    bounced, failed = by_status.get("bounced", 0), by_status.get("failed", 0)

    ev = [E.c.campaign_id == campaign_id, *_in_range(E.c.occurred_at, start, end)]
    human = E.c.is_bot.is_(sa.false())
    opened_or_clicked = sa.and_(human, E.c.kind.in_(("opened", "clicked")))
    kinds = ("unsubscribed", "complained")
    figures = [
        sa.func.count(sa.distinct(E.c.contact_id)).filter(E.c.kind == "unsubscribed"),
        sa.func.count(sa.distinct(E.c.contact_id)).filter(E.c.kind == "complained"),
    ]
    rolled = rollups(start, end)
    if not rolled:
        kinds += ("opened", "clicked")
        figures[:0] = [
            sa.func.count(sa.distinct(E.c.contact_id)).filter(opened_or_clicked),
            sa.func.count(sa.distinct(E.c.contact_id)).filter(human, E.c.kind == "clicked"),
            sa.func.count().filter(human, E.c.kind == "opened"),
            sa.func.count().filter(human, E.c.kind == "clicked"),
            sa.func.count().filter(E.c.is_bot.is_(sa.true()), E.c.kind == "opened"),
            sa.func.count().filter(E.c.is_bot.is_(sa.true()), E.c.kind == "clicked"),
        ]
    row = tuple(db.session.execute(sa.select(*figures).where(*ev, E.c.kind.in_(kinds))).one())
    if rolled:
        counts = db.session.execute(sa.select(RC.c.unique_opens, RC.c.unique_clicks, RC.c.opens, RC.c.clicks,
                                              RC.c.bot_opens, RC.c.bot_clicks)
                                    .where(RC.c.campaign_id == campaign_id)).one_or_none()
        row = tuple(counts or (0,) * 6) + row
    unique_opens, unique_clicks, opens, clicks, bot_opens, bot_clicks, unsubscribes, complaints = row

    origin = campaign.started_at
    if origin is None and sent:
        origin = db.session.scalar(sa.select(sa.func.min(D.c.sent_at)).where(D.c.campaign_id == campaign_id))
    # Messages leave between the start and the end of the sending (still sending: until now).
    conv = _conversions(campaign_id, origin if sent else None, campaign.finished_at or utcnow(), start, end)
    return {
        "campaign": {"id": campaign.id, "name": campaign.name, "channel": campaign.channel,
                     "status": campaign.status, "track": campaign.track,
                     "started_at": origin.isoformat() if origin else None},
        "from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
        "sent": sent, "delivered": delivered, "bounced": bounced, "failed": failed,
        "unique_opens": unique_opens, "unique_clicks": unique_clicks, "opens": opens, "clicks": clicks,
        "bot_opens": bot_opens, "bot_clicks": bot_clicks,
        "open_rate": ratio(unique_opens, delivered), "click_rate": ratio(unique_clicks, delivered),
        "click_to_open": ratio(unique_clicks, unique_opens),
        "unsubscribes": unsubscribes, "unsubscribe_rate": ratio(unsubscribes, delivered), "complaints": complaints,
        "bounce_rate": ratio(bounced, sent + bounced),
        **conv, "conversion_rate": ratio(conv["conversions"], delivered),
        "timeline": _timeline(campaign_id, origin, start, end, campaign.started_at),
        "top_links": top_links(campaign_id, start, end),
    }


def _conversions(campaign_id: int, first_sent, last_sent, start, end) -> dict:
    days = window_days()
    empty = {"conversions": 0, "purchases": 0, "revenue": "0.00", "window_days": days}
    if first_sent is None:
        return empty
    # The recipients' purchases in the window first (a join on the campaign's deliveries), then the
    # attribution of those only: its two lookups per purchase are the cost of this figure.
    candidates = (sa.select(P.c.contact_id, P.c.amount, P.c.occurred_at)
                  .join(D, sa.and_(D.c.contact_id == P.c.contact_id, D.c.campaign_id == campaign_id,
                                   D.c.status.in_(SENT)))
                  .where(P.c.occurred_at >= first_sent, P.c.occurred_at <= last_sent + timedelta(days=days),
                         *_in_range(P.c.occurred_at, start, end))
                  .cte("candidates").prefix_with("MATERIALIZED"))
    credited = (sa.select(candidates.c.contact_id, candidates.c.amount)
                .where(attributed_campaign(candidates, days) == campaign_id).subquery())
    n, lines, revenue = db.session.execute(sa.select(
        sa.func.count(sa.distinct(credited.c.contact_id)), sa.func.count(), sa.func.sum(credited.c.amount))).one()
    return {"conversions": n, "purchases": lines, "revenue": f"{revenue or 0:.2f}", "window_days": days}


def rollups(start=None, end=None) -> bool:
    """Whether the opens and clicks can be read from the rollups: PostgreSQL (triggers), over all time."""
    return start is None and end is None and dialect() == "postgresql"


def rebuild_rollups(conn) -> None:
    """PostgreSQL: the rollups computed afresh from message_events (migration 0012's function), for events
    loaded with the triggers off (session_replication_role = replica, as the benchmark's bulk load)."""
    conn.execute(sa.text("SELECT tracking_rollup_rebuild()"))


def _timeline_rolled(campaign_id: int, origin: datetime) -> list | None:
    """The timeline's buckets from the rollup; None when some were counted from another origin (the
    campaign had not started when they were written: the events are read instead)."""
    rows = db.session.execute(sa.select(RT.c.origin == origin, RT.c.bucket, RT.c.opens, RT.c.clicks)
                              .where(RT.c.campaign_id == campaign_id, sa.or_(RT.c.opens != 0, RT.c.clicks != 0))
                              .order_by(RT.c.bucket)).all()
    if not all(mine for mine, *_ in rows):
        return None
    return [(b, opens, clicks) for _, b, opens, clicks in rows if b >= 0]


def _timeline(campaign_id: int, origin: datetime | None, start, end, started_at=None) -> list[dict]:
    """[{"at", "unit": "hour"|"day", "opens", "clicks"}]: human events per bucket since the start."""
    if origin is None:
        return []
    rows = _timeline_rolled(campaign_id, origin) if rollups(start, end) and origin == started_at else None
    if rows is None:
        rows = _timeline_counted(campaign_id, origin, start, end)
    out = []
    for b, opens, clicks in rows:
        if isinstance(b, datetime):  # PostgreSQL: the bucket's start
            hours = round((b - origin).total_seconds() / 3600)
            b = hours if hours < HOURLY else HOURLY + (hours - HOURLY) // 24
        b = int(b)
        if b < HOURLY:
            at, unit = origin + timedelta(hours=b), "hour"
        else:
            at, unit = origin + timedelta(hours=HOURLY, days=b - HOURLY), "day"
        out.append({"at": at.isoformat(), "unit": unit, "opens": opens, "clicks": clicks})
    return out


def _timeline_counted(campaign_id: int, origin: datetime, start, end) -> list:
    if dialect() == "postgresql":
        # date_bin: timestamp arithmetic, much cheaper than numeric epochs on hundreds of thousands of rows.
        at = E.c.occurred_at
        day_origin = origin + timedelta(hours=HOURLY)
        bucket = sa.case(
            (at < day_origin, sa.func.date_bin(sa.text("interval '1 hour'"), at, sa.literal(origin, at.type))),
            else_=sa.func.date_bin(sa.text("interval '1 day'"), at, sa.literal(day_origin, at.type)))
        bucket = sa.type_coerce(bucket, at.type).label("b")
    else:
        delta = epoch(E.c.occurred_at) - int(origin.timestamp())
        bucket = sa.case((delta < HOURLY * 3600, sa.func.floor(delta / 3600.0)),
                         else_=HOURLY + sa.func.floor((delta - HOURLY * 3600) / 86400.0))
        bucket = sa.cast(bucket, sa.Integer).label("b")
    return db.session.execute(
        sa.select(bucket, sa.func.count().filter(E.c.kind == "opened"), sa.func.count().filter(E.c.kind == "clicked"))
        .where(E.c.campaign_id == campaign_id, E.c.kind.in_(("opened", "clicked")), E.c.is_bot.is_(sa.false()),
               E.c.occurred_at >= origin, *_in_range(E.c.occurred_at, start, end))
        .group_by(sa.text("b")).order_by(sa.text("b"))).all()


def top_links(campaign_id: int, start=None, end=None, limit: int = TOP_LINKS) -> list[dict]:
    if rollups(start, end):
        rows = db.session.execute(
            sa.select(RL.c.url, RL.c.clicks, RL.c.unique_clicks)
            .where(RL.c.campaign_id == campaign_id, RL.c.clicks != 0)
            .order_by(RL.c.unique_clicks.desc(), RL.c.clicks.desc(), RL.c.url).limit(limit)).all()
        return [{"url": u, "clicks": c, "unique_clicks": n} for u, c, n in rows]
    url = E.c.data["url"].as_string().label("url")
    rows = db.session.execute(
        sa.select(url, sa.func.count().label("clicks"), sa.func.count(sa.distinct(E.c.contact_id)).label("contacts"))
        .where(E.c.campaign_id == campaign_id, E.c.kind == "clicked", E.c.is_bot.is_(sa.false()),
               *_in_range(E.c.occurred_at, start, end))
        .group_by(url).order_by(sa.text("contacts DESC"), sa.text("clicks DESC"), url).limit(limit)).all()
    return [{"url": u, "clicks": c, "unique_clicks": n} for u, c, n in rows]


def campaigns_overview(start: datetime | None = None, end: datetime | None = None, limit: int = 50) -> list[dict]:
    """One line per campaign started in the range (newest first): sent, unique opens and clicks, rates."""
    where = _in_range(Campaign.started_at, start, end)
    campaigns = db.session.execute(sa.select(Campaign.id, Campaign.name, Campaign.channel, Campaign.started_at)
                                   .where(Campaign.started_at.isnot(None), *where)
                                   .order_by(Campaign.started_at.desc(), Campaign.id.desc()).limit(limit)).all()
    ids = [c.id for c in campaigns]
    if not ids:
        return []
    delivered = dict(db.session.execute(sa.select(D.c.campaign_id, sa.func.count()).where(
        D.c.campaign_id.in_(ids), D.c.status.in_(DELIVERED)).group_by(D.c.campaign_id)).all())
    human = E.c.is_bot.is_(sa.false())
    engaged = {r[0]: r[1:] for r in db.session.execute(sa.select(
        E.c.campaign_id,
        sa.func.count(sa.distinct(E.c.contact_id)).filter(human, E.c.kind.in_(("opened", "clicked"))),
        sa.func.count(sa.distinct(E.c.contact_id)).filter(human, E.c.kind == "clicked"),
        sa.func.count(sa.distinct(E.c.contact_id)).filter(E.c.kind == "unsubscribed"),
    ).where(E.c.campaign_id.in_(ids), E.c.kind.in_(("opened", "clicked", "unsubscribed")))
        .group_by(E.c.campaign_id)).all()}
    out = []
    for c in campaigns:
        n = delivered.get(c.id, 0)
        opens, clicks, unsubs = engaged.get(c.id, (0, 0, 0))
        out.append({"id": c.id, "name": c.name, "channel": c.channel, "started_at": c.started_at.isoformat(),
                    "delivered": n, "unique_opens": opens, "unique_clicks": clicks, "unsubscribes": unsubs,
                    "open_rate": ratio(opens, n), "click_rate": ratio(clicks, n)})
    return out
