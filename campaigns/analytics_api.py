"""/api/v1/analytics/... and /api/v1/campaigns/{id}/report: every figure as JSON, or CSV (?format=csv).

Date range: `?from=` and `?to=` (ISO dates or times with an offset; a date means its midnight UTC;
`to` is exclusive). A bad date is a 422 naming the field. CSV: one table per answer, chosen by
`?table=` (each endpoint lists its tables; the first is the default); scalars come as metric,value rows.

    GET /campaigns/{id}/report        tables: summary, timeline, top_links
    PUT /campaigns/{id}/tracking      {"track": true|false}  (marketer)
    GET /analytics/campaigns          tables: campaigns
    GET /analytics/customers          tables: summary
    GET /analytics/portfolio          rfm grid + pareto + small customers with potential (JSON only)
    GET /analytics/rfm                tables: cells, groups
    GET /analytics/pareto             tables: classes, summary
    GET /analytics/potential          tables: top, summary
    GET /analytics/audience           growth + funnel + unsubscribes + freshness (JSON only)
    GET /analytics/growth             tables: months, summary
    GET /analytics/funnel             tables: by_form, by_source, summary, views_by_source, views_by_day,
                                              views_by_form_day
    GET /analytics/unsubscribes       tables: reasons
    GET /analytics/freshness          tables: summary
"""
from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timezone

from flask import Response, jsonify, request
from flask_smorest import Blueprint

from envoi.api import SECURITY, json_object
from envoi.auth.api import require
from envoi.errors import ValidationError

blp = Blueprint("analytics", __name__, description="Tracking reports and analytics")

_RANGE_DOC = [{"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"},
               "description": "start (ISO date or time), inclusive"},
              {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"},
               "description": "end (ISO date or time), exclusive"},
              {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]}},
              {"name": "table", "in": "query", "schema": {"type": "string"}, "description": "CSV: which table"}]


def _when(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    text = raw.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=timezone.utc)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("invalid date", {name: "expected an ISO date (2026-01-31) or time with its offset"}) \
            from None
    if value.tzinfo is None:
        raise ValidationError("invalid date", {name: "a time needs its offset (Z or +01:00)"})
    if not 1900 <= value.year <= 9999:
        raise ValidationError("invalid date", {name: "out of range"})
    return value.astimezone(timezone.utc)


def date_range() -> tuple[datetime | None, datetime | None]:
    start, end = _when("from"), _when("to")
    if start is not None and end is not None and end <= start:
        raise ValidationError("invalid date range", {"to": "must be after from"})
    return start, end


def _summary(data: dict) -> list[dict]:
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += [{"metric": f"{key}.{k}", "value": v} for k, v in value.items() if not isinstance(v, (dict, list))]
        elif not isinstance(value, list):
            rows.append({"metric": key, "value": value})
    return rows


def answer(data: dict, tables: dict | None = None, fmt: str | None = None):
    """JSON, or the CSV of one table (`tables`: name -> function of the data giving a list of dicts).
    `fmt`: json or csv, else ?format= (default json)."""
    fmt = fmt or request.args.get("format", "json")
    if fmt not in ("json", "csv") or (fmt == "csv" and not tables):
        raise ValidationError("invalid format", {"format": "expected json" + (" or csv" if tables else "")})
    if fmt == "json":
        return jsonify(data)
    name = request.args.get("table") or next(iter(tables))
    if name not in tables:
        raise ValidationError("unknown table", {"table": f"expected one of {', '.join(tables)}"})
    rows = tables[name](data)
    out = io.StringIO()
    columns = list(rows[0]) if rows else ["metric", "value"]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{request.path.rsplit("/", 1)[-1]}-{name}.csv"'
    return response


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    # A spreadsheet must not run what a URL or a name holds (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _kpis():
    from contacts import kpis

    return kpis


def _table(key: str):
    return lambda data: data[key]


# The exports of the figures that are a function of a date range (or of nothing): name ->
# (the service function of (start, end), its CSV tables). Shared by these routes and the admin's CSV links.
def _profile(data: dict) -> list[dict]:
    """The lookalikes' profile as rows: one per field and value."""
    return [{"field": t["field"], **v} for t in data["profile"] for v in t["values"]]


REPORTS = {
    "customers": (lambda s, e: _kpis().customers_report(s, e), {"summary": _summary}),
    "rfm": (lambda s, e: _kpis().rfm_grid(), {"cells": _table("cells"), "groups": _table("groups")}),
    "pareto": (lambda s, e: _kpis().pareto(), {"classes": _table("classes"), "summary": _summary}),
    "potential": (lambda s, e: _kpis().small_with_potential(), {"top": _table("top"), "summary": _summary}),
    "growth": (lambda s, e: _kpis().subscriber_growth(s, e), {"months": _table("months"), "summary": _summary}),
    "lookalikes": (lambda s, e: _kpis().lookalikes(), {"top": _table("top"), "profile": _profile,
                                                       "summary": _summary}),
    "funnel": (lambda s, e: _kpis().optin_funnel(s, e), {
        "by_form": _table("by_form"), "by_source": _table("by_source"), "summary": _summary,
        "views_by_source": _table("views_by_source"), "views_by_day": _table("views_by_day"),
        "views_by_form_day": _table("views_by_form_day")}),
    "unsubscribes": (lambda s, e: _kpis().unsubscribe_reasons(s, e), {"reasons": _table("reasons")}),
    "freshness": (lambda s, e: _kpis().data_freshness(), {"summary": _summary}),
}


def export(name: str, fmt: str | None = None):
    """The answer of REPORTS[name] over ?from= and ?to=."""
    compute, tables = REPORTS[name]
    start, end = date_range()
    return answer(compute(start, end), tables, fmt)


def campaign_tables() -> dict:
    return {"summary": _summary, "timeline": _table("timeline"), "top_links": _table("top_links")}


# ---------------------------------------------------------------- campaigns

@blp.route("/campaigns/<id:campaign_id>/report")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC)
def campaign_report(campaign_id):
    """Delivered, unique human opens and clicks, CTR, unsubscribes, bounces, conversions and revenue,
    timeline (hourly for 48 h, then daily), top links."""
    from campaigns.reports import campaign_report as report

    start, end = date_range()
    return answer(report(campaign_id, start, end), campaign_tables())


@blp.route("/campaigns/<id:campaign_id>/tracking", methods=["PUT"])
@require("marketer")
@blp.doc(security=SECURITY)
def campaign_tracking(campaign_id):
    """Switch open and click tracking of a campaign: {"track": true|false}."""
    from campaigns.tracking import set_campaign_tracking

    body = json_object()
    if not isinstance(body.get("track"), bool):
        raise ValidationError("invalid tracking switch", {"track": "expected true or false"})
    return jsonify(set_campaign_tracking(campaign_id, body["track"]))


@blp.route("/analytics/campaigns")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC)
def campaigns_overview():
    """One line per campaign started in the range: delivered, unique opens and clicks, rates."""
    from campaigns.reports import campaigns_overview as overview

    start, end = date_range()
    data = {"from": start and start.isoformat(), "to": end and end.isoformat(), "items": overview(start, end)}
    return answer(data, {"campaigns": lambda d: d["items"]})


# ---------------------------------------------------------------- customers

@blp.route("/analytics/customers")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC)
def customers():
    """Revenue, customers, revenue per customer, purchase frequency, retention (default: the last 365 days)."""
    return export("customers")


@blp.route("/analytics/portfolio")
@require("viewer")
@blp.doc(security=SECURITY)
def portfolio():
    """RFM grid, ABC/Pareto and small customers with potential (lifetime purchases)."""
    from contacts import kpis

    return answer(kpis.portfolio_report())


@blp.route("/analytics/rfm")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC[2:])
def rfm_grid():
    return export("rfm")


@blp.route("/analytics/pareto")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC[2:])
def pareto():
    return export("pareto")


@blp.route("/analytics/potential")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC[2:])
def potential():
    return export("potential")


@blp.route("/analytics/lookalikes")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC[2:])
def lookalikes():
    """Small customers who look like the big ones in the segment sense: the big customers' profile (segment
    field values over-represented among them), how many small customers share it, the rule selecting them."""
    return export("lookalikes")


# ---------------------------------------------------------------- audience

@blp.route("/analytics/audience")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC[:2])
def audience():
    """Subscriber growth, opt-in funnel, unsubscribes, data freshness."""
    from contacts import kpis

    start, end = date_range()
    return answer(kpis.audience_report(start, end))


@blp.route("/analytics/growth")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC)
def growth():
    return export("growth")


@blp.route("/analytics/funnel")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC)
def funnel():
    """Opt-in funnel: form views, signups, confirmations and their rates, by form and by source.

    Views (hosted page, inline, popup) are counted per UTC day: a day is in the range when it begins
    in it. `signup_rate` is signups through forms over views; `confirmation_rate` confirmations over
    signups. CSV tables: by_form, by_source, summary, views_by_source, views_by_day, views_by_form_day."""
    return export("funnel")


@blp.route("/analytics/unsubscribes")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC)
def unsubscribes():
    return export("unsubscribes")


@blp.route("/analytics/freshness")
@require("viewer")
@blp.doc(security=SECURITY, parameters=_RANGE_DOC[2:])
def freshness():
    return export("freshness")