"""Admin pages of signup forms: list, edit (fields, topics, consent text, popup trigger), a live
preview of the hosted page and of the popup, and the embed snippet. Saves through optin.services."""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app, flash, make_response, redirect, render_template, request, url_for

from contacts.models import AttributeDefinition, Topic
from envoi.admin.shell import admin_blueprint, t
from envoi.errors import EnvoiError
from envoi.extensions import db
from optin import services
from optin.i18n import pick_lang
from optin.models import POPUP_TRIGGERS, Form

bp = admin_blueprint("admin_forms", __name__, "/admin/forms")

LIST_KEYS = ("fields", "attributes", "channels", "topics")
NUMBERS = ("delay_seconds", "scroll_percent", "frequency_days")


def _posted(f=None) -> dict:
    """The form's settings as the API's JSON would carry them (from the editor's fields)."""
    f = request.form if f is None else f
    data: dict = {key: f.getlist(key) for key in LIST_KEYS}
    for key in ("slug", "title", "consent_text", "consent_version"):
        data[key] = (f.get(key) or "").strip()
    for key in ("redirect_url", "confirm_redirect_url"):
        data[key] = (f.get(key) or "").strip() or None
    data["double_opt_in"] = f.get("double_opt_in") == "on"
    data["allowed_origins"] = [line.strip() for line in (f.get("allowed_origins") or "").splitlines() if line.strip()]
    popup: dict = {"trigger": f.get("popup_trigger") or "inline"}
    for key in NUMBERS:
        raw = (f.get(f"popup_{key}") or "").strip()
        if raw:
            popup[key] = int(raw) if raw.lstrip("-").isdigit() else raw
    data["popup"] = popup
    return data


def _choices() -> dict:
    return {"all_fields": services.FORM_FIELDS, "triggers": POPUP_TRIGGERS,
            "topics": db.session.scalars(sa.select(Topic).order_by(Topic.slug)).all(),
            "attributes": db.session.scalars(sa.select(AttributeDefinition).order_by(AttributeDefinition.key)).all()}


def _page(form: dict, errors: dict | None = None, status: int = 200):
    base = current_app.config["BASE_URL"].rstrip("/")
    return render_template("admin/forms/edit.html", form=form, errors=errors or {}, base_url=base,
                           **_choices()), status


DEFAULT = {"slug": "", "title": "", "fields": ["email", "first_name"], "attributes": [], "channels": ["email"],
           "topics": [], "double_opt_in": True, "consent_text": "", "consent_version": "1", "redirect_url": None,
           "confirm_redirect_url": None, "allowed_origins": [],
           "popup": {"trigger": "inline", "delay_seconds": 5, "scroll_percent": 50, "frequency_days": 7}}


@bp.get("")
def index():
    after = request.args.get("after", "")
    rows, nxt = services.list_forms(int(after) if after.isdigit() and int(after) < 2**63 else None, 100)
    return render_template("admin/forms/index.html", forms=rows, next_after=nxt)


@bp.route("/new", methods=["GET", "POST"])
def new():
    if request.method == "GET":
        return _page(dict(DEFAULT))
    data = _posted()
    try:
        form = services.create_form(data)
    except EnvoiError as err:
        db.session.rollback()
        return _page({**DEFAULT, **data}, err.fields or {"_": err.message}, err.status)
    flash(t("Saved."), "ok")
    return redirect(url_for(".edit", form_id=form.id), 303)


@bp.route("/<id:form_id>", methods=["GET", "POST"])
def edit(form_id: int):
    form = services.get_form(form_id)
    if request.method == "GET":
        return _page(services.form_to_dict(form))
    data = _posted()
    try:
        services.update_form(form_id, data)
    except EnvoiError as err:
        db.session.rollback()
        if err.status == 404:
            raise
        return _page({**services.form_to_dict(services.get_form(form_id)), **data}, err.fields or
                     {"_": err.message}, err.status)
    flash(t("Saved."), "ok")
    return redirect(url_for(".edit", form_id=form_id), 303)


@bp.post("/<id:form_id>/delete")
def delete(form_id: int):
    services.delete_form(form_id)
    flash(t("Saved."), "ok")
    return redirect(url_for(".index"), 303)


@bp.get("/<id:form_id>/preview")
def preview(form_id: int):
    """The hosted page /forms/<slug> exactly as visitors get it (optin's own renderer), framable
    by the admin page only. A signup sent from the preview is a real one."""
    from optin.views import _render_form

    form = services.get_form(form_id)
    response = _render_form(form, pick_lang())
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
    return response


@bp.get("/<id:form_id>/popup-preview")
def popup_preview(form_id: int):
    """A blank host page with the embed script: the popup as a site's visitor would see it."""
    form = services.get_form(form_id)
    return render_template("admin/forms/popup_preview.html", form=services.form_to_dict(form))


# --------------------------------------------------------------------------- live preview

def _unsaved() -> Form:
    """The editor's current fields as a Form that is never added to the session (nothing is
    saved): checked by the API's own validation (optin.services.clean_form)."""
    form = Form(**services.clean_form(_posted(request.args)))
    form.id = int(request.args["form_id"]) if request.args.get("form_id", "").isdigit() else 0
    return form


def _invalid(err: EnvoiError):
    response = make_response(render_template("admin/forms/preview_errors.html", err=err), 422)
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/live-preview")
def live_preview():
    """The hosted page as the editor's unsaved fields would render it (the editor's JS loads it as
    you type). GET: it changes nothing; its own form posts nowhere useful (a preview)."""
    from optin.views import _render_form

    try:
        form = _unsaved()
    except EnvoiError as err:
        return _invalid(err)
    response = _render_form(form, pick_lang())
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'self'; form-action 'none'"
    return response


@bp.get("/live-popup")
def live_popup():
    """The popup on a blank host page, built by the real embed script from the unsaved settings
    (popup-preview.js hands it this definition instead of fetching the saved one, and answers a
    signup from it with a preview message: nothing is stored or sent)."""
    from optin.views import _form_json

    try:
        form = _unsaved()
    except EnvoiError as err:
        return _invalid(err)
    return render_template("admin/forms/popup_preview.html", form=services.form_to_dict(form),
                           definition=_form_json(form, pick_lang()))


@bp.get("/embed-preview.js")
def embed_preview():
    """The embed script for a slug that may not be saved yet (the live popup preview)."""
    from optin.embed import _SAFE_SLUG, _javascript, _script

    slug = request.args.get("slug", "")
    if not _SAFE_SLUG.fullmatch(slug):
        return _javascript("/* Envoi: not a form slug */\n", 404)
    response = _javascript(_script(slug))
    response.headers["Cache-Control"] = "no-store"
    return response
