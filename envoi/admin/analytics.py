"""The Analytics page of the admin: customers, portfolio (RFM grid, ABC/Pareto, small customers with
potential) and audience over a date range, with SVG charts and CSV links.

Every figure comes from contacts.kpis, as the API's; the CSVs are the API's answers
(campaigns.analytics_api.REPORTS), served to the staff session since the API wants a bearer token.
The figures are passes over every customer and consent event (the audience over all time takes
seconds at a million contacts): kept ADMIN_DASHBOARD_CACHE_SECONDS in Redis, as the dashboard's,
the portfolio once, the customers and audience per range; "Refresh" recomputes them."""
from __future__ import annotations

from decimal import Decimal

from flask import abort, render_template, request

from campaigns.analytics_api import REPORTS, date_range, export
from contacts import kpis
from envoi.admin import charts
from envoi.admin.shell import admin_blueprint, cached, figures_ttl, t
from envoi.errors import ValidationError
from envoi.types import utcnow

bp = admin_blueprint("admin_analytics", __name__, "/admin/analytics")

PORTFOLIO_KEY = "envoi:admin:analytics:portfolio:v1"
RANGE_KEY = "envoi:admin:analytics:range:v1:{}/{}"
SCORES = (5, 4, 3, 2, 1)


def _stamped(compute):
    return lambda: {**compute(), "computed_at": utcnow().strftime("%Y-%m-%d %H:%M:%S UTC")}


def portfolio(fresh: bool = False) -> dict:
    """kpis.portfolio_report with the time it was computed, cached."""
    return cached(PORTFOLIO_KEY, figures_ttl(), _stamped(kpis.portfolio_report), fresh)


def ranged(start, end, fresh: bool = False) -> dict:
    """kpis.customers_report and kpis.audience_report over [start, end), cached per range."""
    key = RANGE_KEY.format(start.isoformat() if start else "", end.isoformat() if end else "")
    return cached(key, figures_ttl(), _stamped(lambda: {"customers": kpis.customers_report(start, end),
                                                        "audience": kpis.audience_report(start, end)}), fresh)


def rfm_matrix(cells: list[dict]) -> dict:
    """The grid's cells summed over the monetary score: (recency, frequency) -> customers and revenue."""
    out = {(r, f): {"customers": 0, "revenue": Decimal(0)} for r in SCORES for f in SCORES}
    for cell in cells:
        slot = out[(cell["recency"], cell["frequency"])]
        slot["customers"] += cell["customers"]
        slot["revenue"] += Decimal(cell["revenue"])
    return out


def growth_chart(months: list[dict]):
    """Consents granted and withdrawn per month, one series per channel and direction."""
    labels = sorted({m["month"] for m in months})
    series: dict[str, list[int]] = {}
    for m in months:
        for key, word in (("subscribed", t("subscribed")), ("unsubscribed", t("unsubscribed"))):
            series.setdefault(f"{m['channel']} {word}", [0] * len(labels))[labels.index(m["month"])] += m[key]
    return charts.bars(labels, series, title=t("Subscriber growth")) if labels else None


def pareto_chart(pareto: dict):
    classes = pareto["classes"]
    return charts.hbars([c["class"] for c in classes],
                        {t("Share of customers"): [round((c["share_of_customers"] or 0) * 100, 1) for c in classes],
                         t("Share of revenue"): [round((c["share_of_revenue"] or 0) * 100, 1) for c in classes]},
                        title=t("ABC classes"), unit=" %")


@bp.get("")
def index():
    span = {k: request.args[k] for k in ("from", "to") if request.args.get(k)}
    try:
        start, end = date_range()
    except ValidationError as err:
        return render_template("admin/analytics.html", error=err, span=span), 400
    fresh = request.args.get("fresh") == "1"
    figures, folio = ranged(start, end, fresh), portfolio(fresh)
    audience = figures["audience"]
    return render_template("admin/analytics.html", error=None, customers=figures["customers"], audience=audience,
                           computed_at=figures["computed_at"], portfolio=folio, scores=SCORES,
                           matrix=rfm_matrix(folio["rfm"]["cells"]),
                           growth_chart=growth_chart(audience["growth"]["months"]),
                           pareto_chart=pareto_chart(folio["pareto"]), exports=REPORTS, span=span)


@bp.get("/export/<name>.csv")
def export_csv(name: str):
    """The API's CSV of one report (?table=, ?from=, ?to=), for the staff session."""
    if name not in REPORTS:
        abort(404)
    return export(name, "csv")
