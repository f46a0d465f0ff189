"""Admin pages of the customer file: list and filter, contact page and timeline, edit, log an
interaction, export, erase, CSV import with its progress and rejected rows. Each calls the
services the API calls."""
from __future__ import annotations

import json
import os

import sqlalchemy as sa
from flask import Response, abort, flash, g, redirect, render_template, request, send_file, \
    stream_with_context, url_for

from contacts import exporter, importer, services
from contacts.models import EMAIL_STATUSES, LIFECYCLES, PERSONAL_FIELDS, SMS_STATUSES, ImportJob, Topic
from envoi.admin.shell import admin_blueprint, role, t
from envoi.errors import EnvoiError, ValidationError
from envoi.extensions import db

bp = admin_blueprint("admin_contacts", __name__, "/admin/contacts")

PAGE = 50
FILTERS = ("q", "email_status", "sms_status", "lifecycle", "city", "tag", "topic", "segment")
EDITABLE = ("email", "phone", *PERSONAL_FIELDS)
ACTION_KINDS = ("call", "meeting", "note")


def _filters() -> dict:
    return {k: request.args[k].strip() for k in FILTERS if request.args.get(k, "").strip()}


def _segments() -> list[dict]:
    from segments.services import list_segments

    return list_segments(None, 200)[0]


def _topics() -> list[Topic]:
    return db.session.scalars(sa.select(Topic).order_by(Topic.slug)).all()


@bp.get("")
def index():
    """One keyset page of contacts matching the filters (never the whole table)."""
    filters = _filters()
    try:
        items, nxt = services.list_contacts(filters, request.args.get("cursor"), PAGE)
        error = None
    except ValidationError as err:
        items, nxt, error = [], None, err
    return render_template("admin/contacts/index.html", items=items, next_cursor=nxt, filters=filters,
                           error=error, segments=_segments(), topics=_topics(),
                           email_statuses=EMAIL_STATUSES, sms_statuses=SMS_STATUSES, lifecycles=LIFECYCLES), \
        (422 if error else 200)


@bp.get("/export.csv")
@role("marketer")
def export():
    """The filtered contacts as CSV, streamed page by page (the API's export)."""
    pages = exporter.csv_pages(_filters())
    first = next(pages)[0]  # the filters are checked before anything is streamed

    def body():
        yield first
        for text, _ in pages:
            yield text

    response = Response(stream_with_context(body()), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="contacts.csv"'
    return response


@bp.get("/<id:contact_id>")
def show(contact_id: int, errors: dict | None = None, values: dict | None = None, status: int = 200):
    contact = services.get_contact(contact_id)
    items, nxt = services.timeline(contact_id, request.args.get("cursor"), PAGE)
    topic_names = dict(db.session.execute(sa.select(Topic.id, Topic.slug)).all())
    return render_template("admin/contacts/show.html", c=services.contact_to_dict(contact), timeline=items,
                           next_cursor=nxt, errors=errors or {}, values=values, editable=EDITABLE,
                           lifecycles=LIFECYCLES, topic_names=topic_names, action_kinds=ACTION_KINDS), status


@bp.post("/<id:contact_id>")
def update(contact_id: int):
    raw = {k: (request.form.get(k) or "").strip() or None for k in EDITABLE if k in request.form}
    if "tags" in request.form:
        raw["tags"] = [x.strip() for x in request.form["tags"].split(",") if x.strip()]
    try:
        services.update_contact(contact_id, raw, method="admin", author_id=g.user.id)
    except EnvoiError as err:
        db.session.rollback()
        if err.status == 404:
            raise
        return show(contact_id, errors=err.fields or {"_": err.message}, values=request.form, status=err.status)
    flash(t("Saved."), "ok")
    return redirect(url_for(".show", contact_id=contact_id), 303)


@bp.post("/<id:contact_id>/actions")
def log_action(contact_id: int):
    """Log a call, a meeting or a note on the timeline."""
    kind = request.form.get("kind")
    data = {"text": (request.form.get("text") or "").strip()}
    if request.form.get("subject"):
        data["subject"] = request.form["subject"].strip()
    occurred = (request.form.get("occurred_at") or "").strip() or None
    if occurred and len(occurred) == 16:  # <input type=datetime-local>: minutes, the browser's clock
        occurred += ":00"
    try:
        if kind not in ACTION_KINDS:
            raise ValidationError("invalid action", {"kind": f"one of {', '.join(ACTION_KINDS)}"})
        services.record_action(contact_id, kind, data=data, occurred_at=occurred, author_id=g.user.id)
    except EnvoiError as err:
        db.session.rollback()
        if err.status == 404:
            raise
        return show(contact_id, errors=err.fields or {"_": err.message}, status=err.status)
    flash(t("Saved."), "ok")
    return redirect(url_for(".show", contact_id=contact_id), 303)


@bp.post("/<id:contact_id>/export")
def export_one(contact_id: int):
    """Everything stored about the person (RGPD access), as a JSON download."""
    body = json.dumps(services.export_contact(contact_id), ensure_ascii=False, indent=2)
    response = Response(body, mimetype="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="contact-{contact_id}.json"'
    return response


@bp.post("/<id:contact_id>/erase")
def erase(contact_id: int):
    if request.form.get("confirm") != "yes":
        flash(t("Erase this contact for good?"), "error")
        return redirect(url_for(".show", contact_id=contact_id), 303)
    services.erase_contact(contact_id, method="admin", author_id=g.user.id)
    flash(t("Saved."), "ok")
    return redirect(url_for(".index"), 303)


# --------------------------------------------------------------------------- CSV import

def _job_page(limit: int = 20) -> list[ImportJob]:
    return db.session.scalars(sa.select(ImportJob).order_by(ImportJob.id.desc()).limit(limit)).all()


@bp.route("/import", methods=["GET", "POST"])
def upload():
    """Upload a CSV; a worker imports it (contacts.importer.create_job), the job page shows progress."""
    if request.method == "GET":
        return render_template("admin/contacts/import.html", jobs=_job_page(), topics=_topics(), error=None)
    upload = request.files.get("file")
    topic = (request.form.get("topic") or "").strip() or None
    try:
        job = importer.accept_upload(upload, topic, g.user.id)
        job_id = job.id
        db.session.commit()  # enqueues the worker
    except EnvoiError as err:
        db.session.rollback()
        return render_template("admin/contacts/import.html", jobs=_job_page(), topics=_topics(), error=err), 422
    return redirect(url_for(".job", job_id=job_id), 303)


@bp.get("/imports/<id:job_id>")
def job(job_id: int):
    job = db.session.get(ImportJob, job_id)
    if job is None:
        abort(404)
    rejects = []
    if job.status == "done" and job.rejected and job.rejects_path and os.path.exists(job.rejects_path):
        import csv

        with open(job.rejects_path, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.reader(fh)):
                if i > 20:
                    break
                rejects.append(row)
    return render_template("admin/contacts/job.html", job=job, rejects=rejects)


@bp.get("/imports/<id:job_id>/rejects.csv")
def rejects(job_id: int):
    job = db.session.get(ImportJob, job_id)
    if job is None or job.status != "done" or not job.rejects_path or not os.path.exists(job.rejects_path):
        abort(404)
    return send_file(job.rejects_path, mimetype="text/csv", as_attachment=True,
                     download_name=f"import-{job_id}-rejects.csv")


@bp.app_template_filter("pretty_json")
def _pretty_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
