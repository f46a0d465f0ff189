"""Admin pages of segments: list, the rule builder (the JSON stays visible and editable), a live
count and sample contacts as the rule changes. Counts and samples come from segments.services."""
from __future__ import annotations

import json

import sqlalchemy as sa
from flask import flash, jsonify, redirect, render_template, request, url_for

from contacts.models import CHANNELS, EMAIL_STATUSES, SMS_STATUSES, AttributeDefinition, Topic
from envoi.admin.shell import admin_blueprint, role, t
from envoi.errors import EnvoiError, ValidationError
from envoi.extensions import db
from segments import rfm, services
from segments.models import MESSAGE_EVENT_KINDS
from segments.rules import COMPARE_OPS, ENGAGEMENT_KEYS, OPS_BY_KIND, PURCHASE_KEYS, contact_fields

bp = admin_blueprint("admin_segments", __name__, "/admin/segments")

EMPTY_RULES = {"all": []}


def _catalog() -> dict:
    """What the builder offers: fields with their kind, the operators of each kind, and the
    choices of the other rule kinds (purchases, rfm, engagement, subscription) and of `not`."""
    fields = dict(contact_fields())
    for key, kind in db.session.execute(sa.select(AttributeDefinition.key, AttributeDefinition.type)):
        fields[f"attributes.{key}"] = kind
    return {"fields": fields, "ops": {k: list(v) for k, v in OPS_BY_KIND.items()},
            "topics": db.session.scalars(sa.select(Topic.slug).order_by(Topic.slug)).all(),
            "compare_ops": list(COMPARE_OPS), "rfm_groups": list(rfm.GROUPS), "rfm_dimensions": list(rfm.DIMENSIONS),
            "event_kinds": list(MESSAGE_EVENT_KINDS), "channels": list(CHANNELS),
            "statuses": {"email": list(EMAIL_STATUSES), "sms": list(SMS_STATUSES)},
            "purchase_keys": list(PURCHASE_KEYS), "engagement_keys": list(ENGAGEMENT_KEYS)}


def _page(segment: dict | None, errors: dict | None = None, status: int = 200):
    return render_template("admin/segments/edit.html", segment=segment or {"name": "", "rules": EMPTY_RULES},
                           rules_json=json.dumps((segment or {}).get("rules", EMPTY_RULES), indent=2,
                                                 ensure_ascii=False),
                           catalog=_catalog(), errors=errors or {}), status


def _posted() -> tuple[str, object]:
    raw = request.form.get("rules") or ""
    try:
        rules = json.loads(raw)
    except ValueError as err:
        raise ValidationError("invalid rules", {"rules": f"not JSON: {err}"}) from None
    return request.form.get("name") or "", rules


@bp.get("")
def index():
    items, nxt = services.list_segments(request.args.get("cursor"), 100)
    return render_template("admin/segments/index.html", items=items, next_cursor=nxt)


@bp.route("/new", methods=["GET", "POST"])
def new():
    if request.method == "GET":
        return _page(None)
    try:
        name, rules = _posted()
        segment = services.create_segment(name, rules)
    except EnvoiError as err:
        db.session.rollback()
        return _page({"name": request.form.get("name", ""), "rules": _safe_rules()}, err.fields or
                     {"_": err.message}, err.status)
    flash(t("Saved."), "ok")
    return redirect(url_for(".edit", segment_id=segment.id), 303)


def _safe_rules():
    try:
        return json.loads(request.form.get("rules") or "")
    except ValueError:
        return request.form.get("rules") or ""


@bp.route("/<id:segment_id>", methods=["GET", "POST"])
def edit(segment_id: int):
    segment = services.get_segment(segment_id)
    if request.method == "GET":
        return _page(services.segment_to_dict(segment))
    try:
        name, rules = _posted()
        services.update_segment(segment_id, {"name": name, "rules": rules})
    except EnvoiError as err:
        db.session.rollback()
        if err.status == 404:
            raise
        return _page({"id": segment_id, "name": request.form.get("name", ""), "rules": _safe_rules()},
                     err.fields or {"_": err.message}, err.status)
    flash(t("Saved."), "ok")
    return redirect(url_for(".edit", segment_id=segment_id), 303)


@bp.post("/<id:segment_id>/delete")
def delete(segment_id: int):
    services.delete_segment(segment_id)
    flash(t("Saved."), "ok")
    return redirect(url_for(".index"), 303)


@bp.post("/preview")
@role("viewer")
def preview():
    """Count and sample of an unsaved rule (JSON in, JSON out) for the live counter."""
    body = request.get_json(silent=True)
    rules = body.get("rules") if isinstance(body, dict) else None
    try:
        result = services.preview(rules, sample=5)
    except ValidationError as err:
        return jsonify({"error": err.message, "fields": err.fields}), 422
    return jsonify({"count": result["count"],
                    "sample": [{"id": c["id"], "email": c["email"], "phone": c["phone"],
                                "url": url_for("admin_contacts.show", contact_id=c["id"]),
                                "name": " ".join(x for x in (c["first_name"], c["last_name"]) if x)}
                               for c in result["sample"]]})
