"""Analytics in the admin: the campaign report on a sent campaign's page, and the Analytics page
(customers, portfolio, audience) with its CSV links; figures checked against small datasets worked
out by hand (the datasets of tests/tracking), roles, a bad date, the Redis cache and its refresh."""
from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest

from tests.tracking.test_kpis import NOW, at, contact, customers_purchases, portfolio_customers
from tests.tracking.test_reports import U1, U2, build, h


def _text(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert match, f"no #{element_id} in the page"
    return match.group(1).strip()


def _section(page: str, element_id: str) -> str:
    start = page.index(f'id="{element_id}"')
    return page[start:page.index("</table>", start)]


def _csv(resp) -> list[dict]:
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))


# ---------------------------------------------------------------- the campaign page

def test_a_sent_campaign_page_shows_its_report_cached(app, viewer):
    from envoi.extensions import db
    from segments.models import MessageEvent

    with app.app_context():
        ids = build()
    page = viewer.get(f"/admin/campaigns/{ids['a']}").get_data(as_text=True)
    # Campaign A of tests/tracking/test_reports.py: 4 delivered, 3 human openers (one by a click), 2 clickers,
    # 1 unsubscribed, 1 bounced; 3 purchases credited (100 + 40 + 60); 2 bot opens and 1 bot click set apart.
    assert {k: _text(page, f"r-{k}") for k in ("delivered", "opens", "open-rate", "clicks", "click-rate",
                                                "unsubscribes", "bounced", "conversions", "revenue",
                                                "bot-opens", "bot-clicks")} == {
        "delivered": "4", "opens": "3", "open-rate": "75.0 %", "clicks": "2", "click-rate": "50.0 %",
        "unsubscribes": "1", "bounced": "1", "conversions": "3", "revenue": "200.00",
        "bot-opens": "2", "bot-clicks": "1"}
    links = _section(page, "top-links")
    assert links.index(U1) < links.index(U2)
    # The timeline: hours 0..47 then days; opens at H+1, H+3, a click at H+30, an open on day 1 (49 bars each).
    chart = page[page.index('aria-label="Opens and clicks over time"'):]
    chart = chart[:chart.index("</svg>")]
    assert "H+1 Opens: 1</title>" in chart and "H+30 Clicks: 1</title>" in chart
    assert (h(48).strftime("%m-%d") + " Opens: 1</title>") in chart
    assert chart.count(" Opens: ") == 49
    # Cached like the stats: a late event shows only when the cache expires.
    with app.app_context():
        db.session.add(MessageEvent(contact_id=ids["c"][4], campaign_id=ids["a"], channel="email", kind="opened",
                                    occurred_at=h(5), is_bot=False, data={}))
        db.session.commit()
    assert _text(viewer.get(f"/admin/campaigns/{ids['a']}").get_data(as_text=True), "r-opens") == "3"


def test_a_draft_has_no_report(app, marketer):
    from tests.admin.test_campaigns import _email_campaign, _segment

    cid = _email_campaign(marketer, _segment(marketer))
    assert 'id="report"' not in marketer.get(f"/admin/campaigns/{cid}").get_data(as_text=True)


def test_campaign_report_csv_neutralises_formulas(app, viewer):
    from envoi.extensions import db
    from segments.models import MessageEvent

    with app.app_context():
        ids = build()
        db.session.add(MessageEvent(contact_id=ids["c"][1], campaign_id=ids["a"], channel="email", kind="clicked",
                                    occurred_at=h(4), is_bot=False, data={"url": "=HYPERLINK(\"x\")"}))
        db.session.commit()
    rows = _csv(viewer.get(f"/admin/campaigns/{ids['a']}/report.csv?table=top_links"))
    assert [r["url"] for r in rows] == ["'=HYPERLINK(\"x\")", U1, U2]  # ranked by contacts, clicks, then url
    summary = {r["metric"]: r["value"] for r in _csv(viewer.get(f"/admin/campaigns/{ids['a']}/report.csv"))}
    assert (summary["delivered"], summary["unique_opens"], summary["revenue"]) == ("4", "3", "200.00")
    bad = viewer.get(f"/admin/campaigns/{ids['a']}/report.csv?from=yesterday")
    assert bad.status_code == 422 and "from" in bad.get_data(as_text=True)


# ---------------------------------------------------------------- the Analytics page: roles and dates

@pytest.mark.parametrize("role", ["viewer", "marketer", "admin"])
def test_every_staff_role_sees_the_analytics_page(app, role):
    from tests.admin.conftest import make_staff

    staff = make_staff(app, role)
    page = staff.get("/admin/analytics")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert 'href="/admin/analytics"' in text  # in the nav
    for section in ("customers", "portfolio", "audience", "exports"):
        assert f'id="{section}"' in text
    # Creating a segment from the potential's rule is a marketer's action.
    assert ('id="potential-segment"' in text) == (role != "viewer")


def test_the_analytics_page_and_its_csv_need_a_login(app, client):
    resp = client.get("/admin/analytics")
    assert resp.status_code == 302 and "/admin/login" in resp.headers["Location"]
    resp = client.get("/admin/analytics/export/customers.csv")
    assert resp.status_code == 302 and "/admin/login" in resp.headers["Location"]


@pytest.mark.parametrize("query, field, message", [
    ("from=2026-13-01", "from", "expected an ISO date"),
    ("to=soon", "to", "expected an ISO date"),
    ("from=2026-02-01&to=2026-01-01", "to", "must be after from"),
])
def test_a_bad_date_is_a_400_page_naming_the_field(app, viewer, query, field, message):
    resp = viewer.get(f"/admin/analytics?{query}")
    assert resp.status_code == 400
    error = _section_of(resp.get_data(as_text=True), "range-error")
    assert f"{field}: {message}" in error
    assert 'name="from"' in resp.get_data(as_text=True)  # the form is there to correct it


def _section_of(page: str, element_id: str) -> str:
    start = page.index(f'id="{element_id}"')
    return html.unescape(page[start:page.index("</div>\n", start)])


# ---------------------------------------------------------------- the figures

def test_customers_figures_over_the_range(app, viewer):
    with app.app_context():
        customers_purchases()  # tests/tracking/test_kpis.py's dataset
    page = viewer.get("/admin/analytics?from=2025-01-01&to=2026-01-01").get_data(as_text=True)
    # 2025: customers 1 (120, 2 purchases), 3 (200), 4 (70): 390 over 3, 4 purchases; 2024's 1, 2, 4: 1 and 4 came back.
    assert {k: _text(page, f"c-{k}") for k in ("revenue", "customers", "per-customer", "frequency", "retention")} == {
        "revenue": "390.00", "customers": "3", "per-customer": "130.00", "frequency": "1.3333",
        "retention": "66.7 %"}
    assert 'value="2025-01-01"' in page and 'value="2026-01-01"' in page
    assert "from=2025-01-01" in page[page.index('id="exports"'):]  # the CSV links keep the range
    rows = _csv(viewer.get("/admin/analytics/export/customers.csv?from=2025-01-01&to=2026-01-01"))
    summary = {r["metric"]: r["value"] for r in rows}
    assert (summary["revenue"], summary["customers"], summary["retention"]) == ("390.00", "3", "0.6667")


def test_portfolio_grid_classes_and_potential_then_cached_until_refreshed(app, viewer, marketer):
    with app.app_context():
        ids = portfolio_customers()
    page = viewer.get("/admin/analytics").get_data(as_text=True)
    grid = _section(page, "rfm-grid")
    # Each customer is alone on the diagonal: (r, f) = (1, 1) 500, (2, 2) 300, (3, 3) 200, (4, 4) 20, (5, 5) 30.
    cells = {(int(r), int(f)): (int(n), total) for r, f, n, total in re.findall(
        r'data-r="(\d)" data-f="(\d)"><strong>(\d+)</strong><br><small>([\d.]+)</small>', grid)}
    assert len(cells) == 25
    assert {k: v for k, v in cells.items() if v[0]} == {
        (1, 1): (1, "500.00"), (2, 2): (1, "300.00"), (3, 3): (1, "200.00"), (4, 4): (1, "20.00"),
        (5, 5): (1, "30.00")}
    groups = _section(page, "rfm-groups")
    assert re.search(r"<td>loyal</td><td class=\"num\">3</td><td class=\"num\">250.00</td>", groups)
    # Ranked 500, 300, 200, 30, 20 of 1050: three customers make 80 %.
    assert _text(page, "p-80") == "3"
    classes = _section(page, "pareto-classes")
    assert re.search(r"<td>A</td><td class=\"num\">3</td><td class=\"num\">1000.00</td>", classes)
    assert re.search(r"<td>C</td><td class=\"num\">2</td><td class=\"num\">50.00</td>", classes)
    assert 'aria-label="ABC classes"' in page and "A Share of revenue: 95.2 %" in page
    # Small with potential: customers 5 then 4 (more purchases first), linked to their pages.
    assert (_text(page, "potential-customers"), _text(page, "potential-revenue")) == ("2", "50.00")
    top = _section(page, "potential-top")
    assert top.index(f'/admin/contacts/{ids[5]}"') < top.index(f'/admin/contacts/{ids[4]}"')

    # The marketer creates the segment from the rule shown; it selects the same two people.
    page = marketer.get("/admin/analytics").get_data(as_text=True)
    rules = html.unescape(re.search(r'name="rules" value="([^"]+)"', page).group(1))
    assert json.loads(rules) == json.loads(html.unescape(_text(page, "potential-rule")))
    resp = marketer.post("/admin/segments/new", {"name": "Potential", "rules": rules})
    assert resp.status_code == 303
    from segments.services import count_segment

    with app.app_context():
        assert count_segment(int(resp.headers["Location"].rsplit("/", 1)[1])) == 2

    # Cached: a new big customer shows after a refresh only.
    with app.app_context():
        contact(20, purchase_count=9, purchase_total=Decimal("5000"), first_purchase_at=NOW - timedelta(days=10),
                last_purchase_at=NOW)
        from envoi.extensions import db

        db.session.commit()
    assert _text(viewer.get("/admin/analytics").get_data(as_text=True), "p-80") == "3"
    assert _text(viewer.get("/admin/analytics?fresh=1").get_data(as_text=True), "p-80") == "1"


def test_audience_growth_funnel_unsubscribes_freshness_and_csv(app, viewer):
    from contacts.models import ConsentEvent
    from envoi.extensions import db

    with app.app_context():
        c = {i: contact(i, updated_at=NOW - timedelta(days=800 if i == 1 else 0),
                        email_status="confirmed" if i in (2, 3) else "none") for i in (1, 2, 3)}

        def consent(i, kind, method, source, when, **data):
            db.session.add(ConsentEvent(contact_id=c[i], channel="email", kind=kind, method=method, source=source,
                                        recorded_at=at(when), data=data))

        for i in (1, 2, 3):
            consent(i, "requested", "form", "form:newsletter", "2026-01-10")
        for i in (2, 3):
            consent(i, "granted", "form", "form:newsletter", "2026-01-11")
        consent(1, "granted", "import", "salon", "2026-02-03")
        consent(1, "withdrawn", "link", "link", "2026-02-20", reason="=1+2")
        db.session.commit()
    page = viewer.get("/admin/analytics").get_data(as_text=True)
    assert (_text(page, "subs-email"), _text(page, "subs-sms")) == ("2", "0")
    growth = _section(page, "growth")
    assert re.search(r"<td>email</td><td>2026-01</td><td class=\"num\">2</td><td class=\"num\">0</td>"
                     r"<td class=\"num\">2</td>", growth)
    assert 'aria-label="Subscriber growth"' in page and "2026-02 email unsubscribed: 1</title>" in page
    # 3 signups on the newsletter form, 2 confirmed there; the import confirmed one more.
    by_form = _section(page, "funnel-by-form")
    assert re.search(r"<td>newsletter</td><td class=\"num\">3</td><td class=\"num\">2</td>"
                     r"<td class=\"num\">66.7 %</td>", by_form)
    by_source = _section(page, "funnel-by-source")
    assert re.search(r"<td>salon</td><td class=\"num\">0</td><td class=\"num\">1</td><td>–</td>", by_source)
    assert "signups: <strong>3</strong>" in page
    assert re.search(r"<td>email</td><td>link</td><td>=1\+2</td><td class=\"num\">1</td>",
                     _section(page, "unsubscribes"))
    assert (_text(page, "stale"), _text(page, "stale-share")) == ("1", "33.3 %")
    # A range narrows the audience figures.
    feb = viewer.get("/admin/analytics?from=2026-02-01").get_data(as_text=True)
    assert "signups: <strong>0</strong>" in feb
    # Cached per range until refreshed: a new signup shows after "Refresh" only.
    with app.app_context():
        consent(3, "requested", "form", "form:promo", "2026-02-05")
        db.session.commit()
    assert "signups: <strong>0</strong>" in viewer.get("/admin/analytics?from=2026-02-01").get_data(as_text=True)
    refreshed = viewer.get("/admin/analytics?from=2026-02-01&fresh=1").get_data(as_text=True)
    assert "signups: <strong>1</strong>" in refreshed
    assert "signups: <strong>3</strong>" in viewer.get("/admin/analytics").get_data(as_text=True)
    # The CSV is the API's: a reason that looks like a formula is neutralised.
    rows = _csv(viewer.get("/admin/analytics/export/unsubscribes.csv"))
    assert [(r["method"], r["reason"], r["count"]) for r in rows] == [("link", "'=1+2", "1")]
    rows = _csv(viewer.get("/admin/analytics/export/funnel.csv?table=by_form"))
    assert [(r["form"], r["signups"], r["confirmations"]) for r in rows] == [
        ("newsletter", "3", "2"), ("promo", "1", "0")]
    assert viewer.get("/admin/analytics/export/nothing.csv").status_code == 404
    assert viewer.get("/admin/analytics/export/funnel.csv?table=nope").status_code == 422


def test_tables_show_every_key_any_row_has_and_a_dash_for_the_missing(app):
    """The funnel's rows are rendered generically: a key one row lacks (say, form views) is "–"."""
    with app.test_request_context():
        template = app.jinja_env.from_string(
            '{% from "admin/_macros.html" import rows_table with context %}{{ rows_table(rows) }}')
        out = template.render(rows=[{"form": "a", "signups": 2, "confirmation_rate": 0.5},
                                    {"form": "b", "views": 10, "signups": 1, "confirmation_rate": None}],
                              _=lambda s: s)
    assert "<th>form</th><th>signups</th><th>confirmation rate</th><th>views</th>" in out
    assert '<td>a</td><td class="num">2</td><td class="num">50.0 %</td><td>–</td>' in out
    assert '<td class="num">12.50</td><td>-x</td>' in template.render(rows=[{"m": "12.50", "t": "-x"}], _=str)
    assert '<td>b</td><td class="num">1</td><td>–</td><td class="num">10</td>' in out
