"""/api/v1/campaigns/{id}/report and /api/v1/analytics/...: JSON, CSV, date ranges, errors naming the field."""
from __future__ import annotations

import csv
import io

import pytest

from tests.tracking.test_kpis import funnel_dataset, portfolio_customers
from tests.tracking.test_reports import U1, build, h

ENDPOINTS = ["campaigns", "customers", "portfolio", "rfm", "pareto", "potential", "lookalikes", "audience", "growth",
             "funnel", "unsubscribes", "freshness"]


def rows(response) -> list[dict]:
    assert response.status_code == 200 and response.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_campaign_report_as_json_and_csv(app, ctx, viewer_api):
    ids = build()
    report = viewer_api.get(f"/api/v1/campaigns/{ids['a']}/report").json
    assert (report["delivered"], report["unique_opens"], report["unique_clicks"], report["revenue"]) == (
        4, 3, 2, "200.00")
    ranged = viewer_api.get(f"/api/v1/campaigns/{ids['a']}/report",
                            query_string={"from": h(2).isoformat(), "to": h(48).isoformat()}).json
    assert (ranged["unique_opens"], ranged["revenue"], ranged["from"]) == (2, "60.00", h(2).isoformat())

    summary = {r["metric"]: r["value"] for r in rows(viewer_api.get(
        f"/api/v1/campaigns/{ids['a']}/report?format=csv"))}
    assert (summary["delivered"], summary["unique_opens"], summary["click_rate"], summary["campaign.name"]) == (
        "4", "3", "0.5", "A")
    timeline = rows(viewer_api.get(f"/api/v1/campaigns/{ids['a']}/report?format=csv&table=timeline"))
    assert [(r["unit"], r["opens"], r["clicks"]) for r in timeline] == [
        ("hour", "1", "1"), ("hour", "1", "0"), ("hour", "0", "1"), ("day", "1", "0")]
    links = rows(viewer_api.get(f"/api/v1/campaigns/{ids['a']}/report?format=csv&table=top_links"))
    assert links[0] == {"url": U1, "clicks": "1", "unique_clicks": "1"}

    assert viewer_api.get("/api/v1/campaigns/999999/report").status_code == 404


@pytest.mark.parametrize("query,field", [
    ({"from": "yesterday"}, "from"), ({"to": "2026-13-01"}, "to"), ({"from": "2026-03-02T10:00:00"}, "from"),
    ({"from": "2026-03-02", "to": "2026-03-01"}, "to"), ({"format": "xml"}, "format"),
    ({"format": "csv", "table": "nope"}, "table"),
])
def test_bad_input_is_a_422_naming_the_field(app, ctx, viewer_api, query, field):
    ids = build()
    for path in (f"/api/v1/campaigns/{ids['a']}/report", "/api/v1/analytics/funnel"):
        response = viewer_api.get(path, query_string=query)
        assert response.status_code == 422, (path, query)
        assert list(response.json["fields"]) == [field]


def test_every_analytics_endpoint_answers_and_needs_a_token(app, ctx, client, viewer_api):
    build()
    portfolio_customers()
    for name in ENDPOINTS:
        response = viewer_api.get(f"/api/v1/analytics/{name}", query_string={"from": "2026-01-01"}
                                  if name not in ("portfolio", "rfm", "pareto", "potential", "lookalikes", "freshness") else {})
        assert response.status_code == 200, name
        assert client.get(f"/api/v1/analytics/{name}").status_code == 401
    assert viewer_api.get("/api/v1/analytics/pareto").json["customers_for_80_percent"] == 3
    classes = rows(viewer_api.get("/api/v1/analytics/pareto?format=csv"))
    assert [(c["class"], c["customers"], c["revenue"]) for c in classes] == [
        ("A", "3", "1000.00"), ("B", "0", "0.00"), ("C", "2", "50.00")]
    cells = rows(viewer_api.get("/api/v1/analytics/rfm?format=csv"))
    assert [(c["recency"], c["group"]) for c in cells] == [("1", "lost"), ("2", "hibernating"), ("3", "loyal"),
                                                            ("4", "loyal"), ("5", "loyal")]
    overview = rows(viewer_api.get("/api/v1/analytics/campaigns?format=csv"))
    assert [(r["name"], r["delivered"], r["unique_opens"]) for r in overview] == [("B", "3", "0"), ("A", "4", "3")]
    # JSON-only answers refuse CSV, naming the field.
    assert viewer_api.get("/api/v1/analytics/portfolio?format=csv").json["fields"] == {"format": "expected json"}


def test_csv_cells_cannot_run_as_formulas(app, ctx, viewer_api):
    from campaigns.models import Campaign
    from envoi.extensions import db

    ids = build()
    campaign = db.session.get(Campaign, ids["a"])
    campaign.name = "=HYPERLINK(\"http://evil\")"
    db.session.commit()
    summary = {r["metric"]: r["value"] for r in rows(viewer_api.get(f"/api/v1/campaigns/{ids['a']}/report?format=csv"))}
    assert summary["campaign.name"] == "'=HYPERLINK(\"http://evil\")"


def test_a_range_of_centuries_answers_instead_of_overflowing(app, ctx, viewer_api):
    """The fuzz test found it: retention compares with the period before, as long; for
    1900-9999 that period starts before year 1. It is clamped, and the answer is a 200."""
    build()
    for name in ENDPOINTS:
        response = viewer_api.get(f"/api/v1/analytics/{name}", query_string={"from": "1900-01-01", "to": "9999-12-31"})
        assert response.status_code == 200, (name, response.json)
    customers = viewer_api.get("/api/v1/analytics/customers", query_string={"from": "1900-01-01", "to": "9999-12-31"})
    assert customers.json["customers"] >= 1


def test_lookalikes_as_json_and_csv(app, ctx, viewer_api):
    from tests.tracking.test_kpis import lookalike_customers

    ids = lookalike_customers()
    answer = viewer_api.get("/api/v1/analytics/lookalikes").json
    assert answer["big_customers"] == 5 and {t["id"] for t in answer["top"]} == {ids[1], ids[3]}
    profile = rows(viewer_api.get("/api/v1/analytics/lookalikes?format=csv&table=profile"))
    assert [(r["field"], r["value"], r["big_customers"]) for r in profile] == [
        ("sector", "retail", "5"), ("headcount", "250+", "5"), ("age", "35-49", "5")]


def test_funnel_shows_form_views_as_json_and_csv(app, ctx, viewer_api):
    funnel_dataset()
    funnel = viewer_api.get("/api/v1/analytics/funnel", query_string={"from": "2026-01-10", "to": "2026-02-01"}).json
    # The keys API consumers had are all still there, with the views added beside them.
    assert {"from", "to", "signups", "confirmations", "confirmation_rate", "by_form", "by_source"} <= funnel.keys()
    assert (funnel["views"], funnel["form_signups"], funnel["signup_rate"]) == (13, 4, 0.3077)
    assert [(r["form"], r["views"], r["signups"], r["signup_rate"]) for r in funnel["by_form"]] == [
        ("newsletter", 7, 3, 0.4286), ("promo", 4, 1, 0.25), ("quiet", 2, 0, 0.0)]

    by_form = rows(viewer_api.get("/api/v1/analytics/funnel?format=csv&table=by_form"))
    assert [(r["form"], r["views"], r["views_popup"], r["signups"], r["signup_rate"]) for r in by_form] == [
        ("newsletter", "11", "5", "3", "0.2727"), ("promo", "4", "0", "1", "0.25"), ("quiet", "2", "2", "0", "0.0")]
    summary = {r["metric"]: r["value"] for r in rows(viewer_api.get("/api/v1/analytics/funnel?format=csv&table=summary"))}
    assert (summary["views"], summary["form_signups"], summary["signup_rate"], summary["signups"]) == (
        "17", "4", "0.2353", "4")
    days = rows(viewer_api.get("/api/v1/analytics/funnel?format=csv&table=views_by_day&to=2026-01-11"))
    assert days == [{"day": "2026-01-09", "views": "3"}, {"day": "2026-01-10", "views": "9"}]
    per_form_day = rows(viewer_api.get("/api/v1/analytics/funnel?format=csv&table=views_by_form_day&from=2026-02-01"))
    assert per_form_day == [{"day": "2026-02-02", "form": "newsletter", "views": "1"}]
    sources = rows(viewer_api.get("/api/v1/analytics/funnel?format=csv&table=views_by_source"))
    assert [(r["source"], r["views"]) for r in sources] == [("hosted", "8"), ("inline", "2"), ("popup", "7")]
    # The calendar's last hours: no day begins in them, and nothing overflows.
    last = viewer_api.get("/api/v1/analytics/funnel", query_string={"from": "9999-12-31T10:00:00Z",
                                                                     "to": "9999-12-31T11:00:00Z"})
    assert last.status_code == 200 and last.json["views"] == 0
    assert viewer_api.get("/api/v1/analytics/funnel", query_string={"to": "9999-12-31T11:00:00Z"}).json["views"] == 17
    # The audience report carries the same funnel.
    assert viewer_api.get("/api/v1/analytics/audience").json["funnel"]["views"] == 17
