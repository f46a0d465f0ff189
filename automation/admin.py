"""Admin pages of automations (journeys): list with their stats, a page per automation (its
definition shown readably and as editable JSON, enable / pause / resume, per-step stats) and a
new-automation page. Every action and number comes from automation.services, as the API's."""
from __future__ import annotations

import json

from flask import abort, flash, redirect, render_template, request, url_for

from automation import services
from envoi.admin.shell import admin_blueprint, control_views, t
from envoi.errors import EnvoiError, ValidationError
from envoi.extensions import db

bp = admin_blueprint("admin_automations", __name__, "/admin/automations")

PAGE = 50
EDITABLE = ("name", "trigger", "audience", "topic", "reentry", "sender", "steps")  # what POST/PATCH accept
EXAMPLE = {
    "name": "Welcome series",
    "trigger": {"type": "subscription", "channel": "email"},
    "steps": [
        {"kind": "email", "subject": "Welcome {{ contact.first_name | default('') }}",
         "html": "<p>Thanks for signing up, {{ contact.first_name | default('friend') }}.</p>"},
        {"kind": "wait", "days": 2},
        {"kind": "email", "subject": "Our best sellers", "text": "Have a look at our best sellers."},
    ],
}


def _json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def definition_of(data: dict) -> dict:
    """The automation as the API's POST/PATCH body (no id, status or times)."""
    return {key: data[key] for key in EDITABLE if key in data}


def _posted() -> dict:
    raw = request.form.get("definition") or ""
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise ValidationError("invalid automation", {"definition": f"not JSON: {err}"}) from None
    if not isinstance(body, dict):
        raise ValidationError("invalid automation", {"definition": "expected a JSON object"})
    return body


@bp.get("")
def index():
    try:
        items, nxt = services.list_automations(request.args.get("cursor"), PAGE)
    except ValidationError as err:
        abort(422, err.message)
    stats = {a["id"]: services.stats(a["id"]) for a in items}
    return render_template("admin/automations/index.html", items=items, stats=stats, next_cursor=nxt)


@bp.route("/new", methods=["GET", "POST"])
def new():
    if request.method == "GET":
        return render_template("admin/automations/new.html", definition=_json(EXAMPLE), errors={})
    try:
        automation = services.create_automation(_posted())
    except EnvoiError as err:
        db.session.rollback()
        return render_template("admin/automations/new.html", definition=request.form.get("definition", ""),
                               errors=err.fields or {"_": err.message}), err.status
    flash(t("Saved."), "ok")
    return redirect(url_for(".show", automation_id=automation.id), 303)


@bp.get("/<id:automation_id>")
def show(automation_id: int, errors: dict | None = None, definition: str | None = None, status: int = 200):
    data = services.automation_to_dict(services.get_automation(automation_id))
    stats = services.stats(automation_id)
    steps = [{**step, **st} for step, st in zip(data["steps"], stats["steps"])]
    return render_template("admin/automations/show.html", a=data, stats=stats, steps=steps, errors=errors or {},
                           definition=definition if definition is not None else _json(definition_of(data))), status


@bp.post("/<id:automation_id>")
def update(automation_id: int):
    try:
        body = _posted()
        current = services.automation_to_dict(services.get_automation(automation_id))
        if current["status"] == "active" and body.get("steps") == current["steps"]:
            body.pop("steps")  # unchanged steps: the name or audience of a running journey may change
        services.update_automation(automation_id, body)
    except EnvoiError as err:
        db.session.rollback()
        if err.status == 404:
            raise
        return show(automation_id, errors=err.fields or {"_": err.message},
                    definition=request.form.get("definition", ""), status=err.status)
    flash(t("Saved."), "ok")
    return redirect(url_for(".show", automation_id=automation_id), 303)


control_views(bp, services, ("enable", "pause", "resume"), "automation_id")
