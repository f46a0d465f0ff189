"""Admin pages of campaigns: list, edit (email or SMS with its segment counter), preview as a
contact, test send, send now or schedule, pause/resume/cancel, live progress and stats with an
SVG chart over time. Every action calls campaigns.services or campaigns.dispatch, as the API does."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from flask import abort, current_app, flash, g, jsonify, redirect, render_template, request, url_for

from campaigns import dispatch, services
from campaigns.models import Delivery
from campaigns.sms import sms_info
from contacts.models import Topic
from envoi.admin import charts
from envoi.admin.shell import admin_blueprint, cached, control_views, flash_refusal, int_arg, role, t
from envoi.errors import EnvoiError, ValidationError
from envoi.extensions import db

bp = admin_blueprint("admin_campaigns", __name__, "/admin/campaigns")

PAGE = 50
TEXT_FIELDS = ("name", "sender", "subject", "html", "text", "body")
BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400)  # chart resolutions, seconds
FINISHED = ("sent", "cancelled")
FINISHED_CACHE_SECONDS = 300  # a finished campaign's numbers move only with late delivery reports


def campaign_stats(campaign_id: int, status: str) -> dict:
    """dispatch.stats, live while a campaign runs; briefly cached once it is finished."""
    if status not in FINISHED:
        return dispatch.stats(campaign_id)
    return cached(f"envoi:admin:campaign:{campaign_id}:stats", FINISHED_CACHE_SECONDS,
                  lambda: dispatch.stats(campaign_id))


def campaign_chart(campaign_id: int, status: str) -> tuple[list[str], dict[str, list[int]]]:
    if status not in FINISHED:
        return sent_over_time(campaign_id)
    labels, series = cached(f"envoi:admin:campaign:{campaign_id}:chart", FINISHED_CACHE_SECONDS,
                            lambda: list(sent_over_time(campaign_id)))
    return labels, series


def campaign_report(campaign_id: int) -> dict:
    """reports.campaign_report over all time, cached like the stats (shown once the campaign is finished)."""
    from campaigns.reports import campaign_report as report

    return cached(f"envoi:admin:campaign:{campaign_id}:report", FINISHED_CACHE_SECONDS, lambda: report(campaign_id))


def timeline_chart(report: dict):
    """The report's timeline as bars: every hour of the first 48 (H+n), then every day (its date), gaps as zeros."""
    from campaigns.reports import HOURLY

    if not report["timeline"] or not report["campaign"]["started_at"]:
        return None
    origin = datetime.fromisoformat(report["campaign"]["started_at"])
    points = {}
    for point in report["timeline"]:
        hours = round((datetime.fromisoformat(point["at"]) - origin).total_seconds() / 3600)
        points[hours if point["unit"] == "hour" else HOURLY + (hours - HOURLY) // 24] = point
    n = max(points) + 1
    labels = [f"H+{i}" if i < HOURLY else (origin + timedelta(hours=HOURLY, days=i - HOURLY)).strftime("%m-%d")
              for i in range(n)]
    return charts.bars(labels, {t("Opens"): [points[i]["opens"] if i in points else 0 for i in range(n)],
                                t("Clicks"): [points[i]["clicks"] if i in points else 0 for i in range(n)]},
                       title=t("Opens and clicks over time"))


def _choices() -> dict:
    from segments.services import list_segments

    return {"segments": list_segments(None, 200)[0],
            "topics": db.session.scalars(sa.select(Topic).order_by(Topic.slug)).all()}


def _form_data() -> dict:
    """The campaign fields of the posted form, as the API's JSON would carry them."""
    data: dict = {}
    for key in TEXT_FIELDS:
        if key in request.form:
            value = request.form[key].replace("\r\n", "\n")
            data[key] = value if value.strip() else None
    if "channel" in request.form:
        data["channel"] = request.form["channel"]
    if "segment_id" in request.form:
        raw = request.form["segment_id"].strip()
        data["segment_id"] = int(raw) if raw.isdigit() else (raw or None)
    if "topic" in request.form:
        data["topic"] = request.form["topic"].strip() or None
    return data


@bp.get("")
def index():
    status = request.args.get("status") or None
    try:
        items, nxt = services.list_campaigns(request.args.get("cursor"), PAGE, status)
    except ValidationError as err:
        abort(422, err.message)
    stats = {c["id"]: campaign_stats(c["id"], c["status"]) for c in items if c["status"] != "draft"}
    return render_template("admin/campaigns/index.html", items=items, stats=stats, next_cursor=nxt, status=status)


@bp.route("/new", methods=["GET", "POST"])
def new():
    if request.method == "GET":
        channel = request.args.get("channel") if request.args.get("channel") in ("email", "sms") else "email"
        return render_template("admin/campaigns/edit.html", c={"channel": channel}, errors={}, **_choices())
    data = _form_data()
    try:
        campaign = services.create_campaign(data, author_id=g.user.id)
    except ValidationError as err:
        db.session.rollback()
        return render_template("admin/campaigns/edit.html", c=data, errors=err.fields, **_choices()), 422
    flash(t("Saved."), "ok")
    return redirect(url_for(".show", campaign_id=campaign.id), 303)


def _epoch(column):
    if db.session.get_bind().dialect.name == "postgresql":
        return sa.func.extract("epoch", column)
    return sa.cast(sa.func.strftime("%s", sa.func.substr(column, 1, 19)), sa.Integer)


def sent_over_time(campaign_id: int) -> tuple[list[str], dict[str, list[int]]]:
    """Messages sent and failed per time bucket (at most ~60 buckets over the campaign's span)."""
    span = db.session.execute(sa.select(sa.func.min(Delivery.sent_at), sa.func.max(Delivery.sent_at))
                              .where(Delivery.campaign_id == campaign_id, Delivery.sent_at.isnot(None))).one()
    if span[0] is None:
        return [], {}
    first, last = span
    seconds = max(1.0, (last - first).total_seconds())
    size = next((b for b in BUCKETS if seconds / b <= 60), BUCKETS[-1])
    start = int(first.timestamp()) // size * size
    bucket = sa.func.floor((_epoch(Delivery.sent_at) - start) / size)
    rows = db.session.execute(sa.select(bucket, sa.func.count()).where(
        Delivery.campaign_id == campaign_id, Delivery.sent_at.isnot(None),
        Delivery.status.in_(("sent", "delivered", "undelivered"))).group_by(bucket)).all()
    n = int(seconds // size) + 2
    sent = [0] * n
    for index, count in rows:
        if index is not None and 0 <= int(index) < n:
            sent[int(index)] += count
    fmt = "%H:%M" if size < 86400 else "%m-%d"
    labels = [datetime.fromtimestamp(start + i * size, timezone.utc).strftime(fmt) for i in range(n)]
    return labels, {"sent": sent}


@bp.get("/<id:campaign_id>")
def show(campaign_id: int, errors: dict | None = None, values: dict | None = None, status: int = 200,
         preview_error: str | None = None):
    campaign = services.get_campaign(campaign_id)
    data = services.campaign_to_dict(campaign)
    stats = campaign_stats(campaign_id, campaign.status) if campaign.status != "draft" else None
    labels, series = campaign_chart(campaign_id, campaign.status) if stats else ([], {})
    chart = charts.bars(labels, {t("Sent"): series["sent"]}, title=t("Sent over time")) if labels else None
    report = campaign_report(campaign_id) if campaign.status in FINISHED else None
    return render_template("admin/campaigns/show.html", c={**data, **(values or {})}, saved=data, stats=stats,
                           chart=chart, report=report, report_chart=timeline_chart(report) if report else None,
                           errors=errors or {}, editable=campaign.status in services.EDITABLE,
                           preview_contact=int_arg("contact_id"), **_choices()), status


@bp.get("/<id:campaign_id>/report.csv")
def report_csv(campaign_id: int):
    """The API's CSV of the report (?table=summary|timeline|top_links, ?from=, ?to=), for a staff session."""
    from campaigns.analytics_api import answer, campaign_tables, date_range
    from campaigns.reports import campaign_report as report

    start, end = date_range()
    return answer(report(campaign_id, start, end), campaign_tables(), "csv")


@bp.post("/<id:campaign_id>")
def update(campaign_id: int):
    try:
        services.update_campaign(campaign_id, _form_data())
    except EnvoiError as err:
        db.session.rollback()
        if err.status == 404:
            raise
        return show(campaign_id, errors=err.fields or {"_": err.message}, values=_form_data(), status=err.status)
    flash(t("Saved."), "ok")
    return redirect(url_for(".show", campaign_id=campaign_id), 303)


def _local_time(raw: str, offset: str | None) -> datetime:
    """<input type=datetime-local> plus the browser's offset (minutes, as JS getTimezoneOffset)."""
    try:
        naive = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError("invalid send time", {"at": "expected a date and time"}) from None
    if naive.tzinfo is not None:
        return naive
    minutes = int(offset) if offset and offset.lstrip("-").isdigit() and abs(int(offset)) < 1440 else 0
    return (naive + timedelta(minutes=minutes)).replace(tzinfo=timezone.utc)


@bp.post("/<id:campaign_id>/send")
def send(campaign_id: int):
    """Send now, or schedule when a time is given (dispatch.launch, as POST /api/v1/campaigns/{id}/send)."""
    try:
        at = (request.form.get("at") or "").strip()
        when = _local_time(at, request.form.get("tz_offset")) if at else None
        dispatch.launch(campaign_id, at=when, author_id=g.user.id)
        flash(t("Saved."), "ok")
    except EnvoiError as err:
        flash_refusal(err)
    return redirect(url_for(".show", campaign_id=campaign_id), 303)


control_views(bp, dispatch, ("pause", "resume", "cancel"), "campaign_id")


@bp.post("/<id:campaign_id>/delete")
def delete(campaign_id: int):
    try:
        services.delete_campaign(campaign_id)
    except EnvoiError as err:
        flash_refusal(err)
        return redirect(url_for(".show", campaign_id=campaign_id), 303)
    flash(t("Saved."), "ok")
    return redirect(url_for(".index"), 303)


@bp.post("/<id:campaign_id>/test")
def test(campaign_id: int):
    """Send a [TEST] copy to up to ten addresses (comma separated), personalised as a contact if given."""
    to = [x.strip() for x in (request.form.get("to") or "").replace(";", ",").split(",") if x.strip()]
    try:
        results = services.send_test(campaign_id, to, int_arg("contact_id"))["results"]
        for r in results:
            flash(f"{t('Sent')}: {r['to']}" if r["sent"] else f"{r['to']}: {r['error']}", "ok" if r["sent"] else "error")
    except EnvoiError as err:
        flash_refusal(err)
    return redirect(url_for(".show", campaign_id=campaign_id), 303)


@bp.get("/<id:campaign_id>/preview")
def preview(campaign_id: int):
    """The message as a contact would get it (services.preview), alone, for the preview iframe."""
    try:
        message = services.preview(campaign_id, int_arg("contact_id"))
    except ValidationError as err:
        body = "; ".join(f"{k}: {v}" for k, v in err.fields.items()) or err.message
        return current_app.response_class(body, status=422, mimetype="text/plain")
    if "html" in message and message.get("html") and request.args.get("part") != "text":
        response = current_app.response_class('<base target="_blank">' + message["html"], mimetype="text/html")
    else:
        text = message.get("text") if "text" in message else message.get("body")
        head = f"Subject: {message['subject']}\n\n" if message.get("subject") else ""
        response = current_app.response_class(head + (text or ""), mimetype="text/plain")
    response.headers["Content-Security-Policy"] = "sandbox allow-popups; script-src 'none'"
    return response


@bp.post("/sms-info")
@role("viewer")
def sms_counter():
    """Encoding and segments of an SMS text as typed (the opt-out mention added), for the live counter."""
    body = (request.get_json(silent=True) or {}).get("body") if request.is_json else request.form.get("body")
    if not isinstance(body, str) or len(body) > services.LIMITS["body"]:
        return jsonify({"error": "invalid body", "fields": {"body": "a text"}}), 422
    optout = current_app.config.get("SMS_OPTOUT_TEXT") or ""
    return jsonify(sms_info(f"{body}\n{optout}".strip()))
