"""The campaign report and purchase attribution on a small dataset whose every figure is worked out by hand."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from campaigns.models import Campaign, Delivery
from campaigns.reports import campaign_report, campaigns_overview
from contacts.models import Contact, Purchase
from envoi.errors import NotFound
from envoi.extensions import db
from segments.models import MessageEvent
from tests.conftest import configured

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
U1, U2 = "https://shop.example.com/a", "https://shop.example.com/b"


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def build() -> dict:
    """Campaign A (T0) to c1..c6, campaign B (T0 + 1 day) to c1..c3; events and purchases around them."""
    contacts = [Contact(email=f"c{i}@example.org", email_status="confirmed", created_at=T0, updated_at=T0)
                for i in range(1, 7)]
    db.session.add_all(contacts)
    a = Campaign(name="A", channel="email", subject="a", html="<p>a</p>", status="sent", started_at=T0,
                 exclude_segment_ids=[])
    b = Campaign(name="B", channel="email", subject="b", html="<p>b</p>", status="sent", started_at=h(24),
                 exclude_segment_ids=[])
    db.session.add_all([a, b])
    db.session.flush()
    c = {i: contacts[i - 1].id for i in range(1, 7)}
    for i in (1, 2, 3, 4):
        db.session.add(Delivery(campaign_id=a.id, contact_id=c[i], channel="email", status="sent", sent_at=T0))
    db.session.add(Delivery(campaign_id=a.id, contact_id=c[5], channel="email", status="bounced"))
    db.session.add(Delivery(campaign_id=a.id, contact_id=c[6], channel="email", status="failed"))
    for i in (1, 2, 3):
        db.session.add(Delivery(campaign_id=b.id, contact_id=c[i], channel="email", status="sent", sent_at=h(24)))

    def event(i, campaign, kind, at, bot=False, url=None):
        db.session.add(MessageEvent(contact_id=c[i], campaign_id=campaign.id, channel="email", kind=kind,
                                    occurred_at=at, is_bot=bot, data={"url": url} if url else {}))

    event(1, a, "opened", h(1))
    event(1, a, "opened", h(3))
    event(1, a, "clicked", h(1 + 5 / 60), url=U1)
    event(2, a, "opened", T0 + timedelta(seconds=5), bot=True)   # prefetch
    event(2, a, "clicked", h(30), url=U2)                         # images blocked: the click proves the open
    event(3, a, "opened", T0 + timedelta(seconds=3), bot=True)
    event(3, a, "opened", h(50))                                  # after 48 hours: a day bucket
    event(4, a, "clicked", T0 + timedelta(seconds=1), bot=True, url=U1)  # link scanner
    event(4, a, "unsubscribed", h(2))
    event(4, b, "clicked", h(25), bot=True, url=U1)               # a scanner on B's link: never a touch

    def buy(i, at, amount):
        db.session.add(Purchase(contact_id=c[i], sku="SKU", amount=Decimal(amount), currency="EUR", occurred_at=at))

    buy(1, h(-1), "500.00")   # before anything was sent: nobody's
    buy(1, h(48), "100.00")   # latest click: A (B was delivered after it, but a click beats a delivery)
    buy(2, h(72), "40.00")    # latest click: A at +30 h
    buy(3, h(48), "25.00")    # no click: latest delivery, B
    buy(3, h(24 * 9), "30.00")  # 8 days after B's delivery: outside a 7-day window
    buy(4, h(26), "60.00")    # only a bot click on B: latest delivery, A
    buy(5, h(1), "999.00")    # A bounced for c5: not a recipient
    db.session.commit()
    return {"a": a.id, "b": b.id, "c": c}


def test_campaign_report_counts_rates_timeline_and_links(app, ctx):
    ids = build()
    report = campaign_report(ids["a"])
    figures = {k: report[k] for k in ("sent", "delivered", "bounced", "failed", "unique_opens", "unique_clicks",
                                      "opens", "clicks", "bot_opens", "bot_clicks", "unsubscribes", "open_rate",
                                      "click_rate", "click_to_open", "unsubscribe_rate", "bounce_rate")}
    assert figures == {"sent": 4, "delivered": 4, "bounced": 1, "failed": 1,
                       "unique_opens": 3, "unique_clicks": 2, "opens": 3, "clicks": 2, "bot_opens": 2,
                       "bot_clicks": 1, "unsubscribes": 1, "open_rate": 0.75, "click_rate": 0.5,
                       "click_to_open": 0.6667, "unsubscribe_rate": 0.25, "bounce_rate": 0.2}
    assert report["timeline"] == [
        {"at": h(1).isoformat(), "unit": "hour", "opens": 1, "clicks": 1},
        {"at": h(3).isoformat(), "unit": "hour", "opens": 1, "clicks": 0},
        {"at": h(30).isoformat(), "unit": "hour", "opens": 0, "clicks": 1},
        {"at": h(48).isoformat(), "unit": "day", "opens": 1, "clicks": 0},
    ]
    assert report["top_links"] == [{"url": U1, "clicks": 1, "unique_clicks": 1},
                                   {"url": U2, "clicks": 1, "unique_clicks": 1}]


def test_purchases_are_credited_to_the_latest_click_else_the_latest_delivery_in_the_window(app, ctx):
    ids = build()
    a, b = campaign_report(ids["a"]), campaign_report(ids["b"])
    assert {k: a[k] for k in ("conversions", "purchases", "revenue", "window_days", "conversion_rate")} == {
        "conversions": 3, "purchases": 3, "revenue": "200.00", "window_days": 7, "conversion_rate": 0.75}
    assert {k: b[k] for k in ("conversions", "purchases", "revenue")} == {
        "conversions": 1, "purchases": 1, "revenue": "25.00"}
    # A wider window reaches c3's second purchase, 8 days after B's delivery.
    with configured(app, CONVERSION_WINDOW_DAYS=14):
        b = campaign_report(ids["b"])
        assert {k: b[k] for k in ("conversions", "purchases", "revenue", "window_days")} == {
            "conversions": 1, "purchases": 2, "revenue": "55.00", "window_days": 14}
        assert campaign_report(ids["a"])["revenue"] == "200.00"


def test_date_range_bounds_events_and_purchases(app, ctx):
    ids = build()
    report = campaign_report(ids["a"], h(2), h(48))
    assert (report["unique_opens"], report["unique_clicks"], report["opens"], report["unsubscribes"]) == (2, 1, 1, 1)
    assert (report["conversions"], report["revenue"]) == (1, "60.00")
    assert [t["at"] for t in report["timeline"]] == [h(3).isoformat(), h(30).isoformat()]


def test_overview_and_unknown_campaign(app, ctx):
    ids = build()
    rows = campaigns_overview()
    assert [(r["id"], r["delivered"], r["unique_opens"], r["unique_clicks"], r["unsubscribes"]) for r in rows] == [
        (ids["b"], 3, 0, 0, 0), (ids["a"], 4, 3, 2, 1)]
    assert [r["id"] for r in campaigns_overview(h(-1), h(1))] == [ids["a"]]
    with pytest.raises(NotFound):
        campaign_report(10**6)


def test_conversion_window_is_configured_and_checked_at_start_up(tmp_path):
    from envoi.config import ConfigError, load_config

    env = {"ENVOI_INSTANCE_PATH": str(tmp_path), "ENVOI_SECRET_KEY": "x" * 32}
    assert load_config(env)["CONVERSION_WINDOW_DAYS"] == 7
    assert load_config({**env, "ENVOI_CONVERSION_WINDOW_DAYS": "30"})["CONVERSION_WINDOW_DAYS"] == 30
    for bad in ("0", "-1", "seven"):
        with pytest.raises(ConfigError, match="ENVOI_CONVERSION_WINDOW_DAYS"):
            load_config({**env, "ENVOI_CONVERSION_WINDOW_DAYS": bad})
