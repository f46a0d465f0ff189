"""Admin settings (admin role only, reads included): subscription topics and declared custom
attributes, through the services the API calls (contacts.services), and the running
configuration, read-only, with its secrets masked."""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from flask import current_app, flash, redirect, render_template, request, url_for

from contacts import services
from contacts.models import ATTRIBUTE_TYPES, AttributeDefinition, Topic
from envoi.admin.shell import admin_blueprint, flash_refusal, role, t
from envoi.errors import EnvoiError
from envoi.extensions import db

bp = admin_blueprint("admin_settings", __name__, "/admin/settings")

MASK = "•••••• (set)"
# Names of settings whose value is a secret (a *_PATH only names a file).
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|AUTH|_KEY$|_KEYS$|FALLBACKS|_SID$|DSN")
URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]+@")


def masked(name: str, value) -> str:
    """What the settings page shows of one setting: secrets as set/not set, and no URL password."""
    if value is None or value == "":
        return "—"
    if SECRET_NAME.search(name) and not name.endswith("_PATH"):
        return MASK
    if isinstance(value, str):
        parts = urlsplit(value) if "://" in value else None
        if parts is not None and parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
        return value
    return URL_PASSWORD.sub(r"\1****@", repr(value))


def running_config() -> list[tuple[str, str]]:
    return [(name, masked(name, value)) for name, value in sorted(current_app.config.items()) if name.isupper()]


def _page(status: int = 200):
    topics = db.session.scalars(sa.select(Topic).order_by(Topic.slug)).all()
    attributes = db.session.scalars(sa.select(AttributeDefinition).order_by(AttributeDefinition.key)).all()
    return render_template("admin/settings.html", topics=topics, attributes=attributes,
                           attribute_types=ATTRIBUTE_TYPES, config=running_config()), status


@bp.get("")
@role("admin")
def index():
    return _page()


def _done(action):
    """Run one change; its refusal (field and reason) is flashed on the settings page."""
    try:
        action()
        flash(t("Saved."), "ok")
    except EnvoiError as err:
        flash_refusal(err)  # a 404 stays a 404
    return redirect(url_for(".index"), 303)


@bp.post("/topics")
@role("admin")
def create_topic():
    f = request.form
    return _done(lambda: services.create_topic((f.get("slug") or "").strip(), f.get("name") or "",
                                               f.get("description") or ""))


@bp.post("/topics/<id:topic_id>")
@role("admin")
def update_topic(topic_id: int):
    f = request.form
    if f.get("action") == "delete":
        return _done(lambda: services.delete_topic(topic_id))
    return _done(lambda: services.update_topic(topic_id, {"name": f.get("name") or "",
                                                          "description": f.get("description") or ""}))


@bp.post("/attributes")
@role("admin")
def create_attribute():
    f = request.form
    return _done(lambda: services.define_attribute((f.get("key") or "").strip(), f.get("type") or "",
                                                   f.get("label") or ""))



