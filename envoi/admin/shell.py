"""What every admin page shares: the session login, CSRF, roles, language and page helpers.

Each admin blueprint is made by `admin_blueprint`, which guards every request: a staff session
is required (else a redirect to the login page), a POST must carry the session's CSRF token, and
the role defaults to viewer for reads and marketer for writes; `@role("admin")` raises it.
"""
from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, request, session, url_for

from envoi.admin.i18n import pick_lang, translator
from envoi.auth.api import RANK
from envoi.extensions import db

PUBLIC_ENDPOINTS = {"admin.login", "admin.static", "admin.set_lang"}
SESSION_USER = "admin_uid"


def csrf_token() -> str:
    """One token per session (the same key as the hosted form's, so one session has one token)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def csrf_ok(value) -> bool:
    expected = session.get("csrf")
    return bool(expected) and isinstance(value, str) and hmac.compare_digest(expected, value)


def current_user():
    """The logged-in active staff user, or None."""
    from envoi.auth.models import User

    if "admin_user" in g:
        return g.admin_user
    uid = session.get(SESSION_USER)
    user = db.session.get(User, uid) if isinstance(uid, int) else None
    if user is not None and (not user.active or session.get("admin_pw") != user.password_hash[-16:]):
        user = None  # deactivated, or the password changed since this session logged in
    g.admin_user = user
    return user


def safe_next(value: str | None) -> str:
    """Where to go after login: only a path inside /admin on this site (no open redirect)."""
    default = url_for("admin.dashboard")
    if not value or not isinstance(value, str):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/admin") or "\\" in value or value.startswith("//"):
        return default
    return value


def role(needed: str):
    """Raise the role a view needs (the default is viewer for GET, marketer for POST)."""

    def deco(view):
        view._admin_role = needed
        return view

    return deco


def _guard():
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    user = current_user()
    if user is None:
        if request.method == "GET":
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        abort(401)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        token = request.form.get("_csrf") or request.headers.get("X-CSRF-Token")
        if not csrf_ok(token):
            abort(400, "missing or invalid CSRF token: reload the page and try again")
    view = current_app.view_functions.get(request.endpoint)
    needed = getattr(view, "_admin_role", None) or ("viewer" if request.method in ("GET", "HEAD") else "marketer")
    if RANK[user.role] < RANK[needed]:
        abort(403, f"this needs the {needed} role")
    g.user = user
    return None


def _context():
    lang = pick_lang(current_user() if request.endpoint not in ("admin.static",) else None)
    user = g.get("admin_user")
    return {"_": translator(lang), "lang": lang, "csrf_token": csrf_token, "current_user": user,
            "can": lambda needed: user is not None and RANK[user.role] >= RANK[needed]}


def _headers(response):
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def admin_blueprint(name: str, import_name: str, url_prefix: str, **kwargs) -> Blueprint:
    """A blueprint of the admin UI: login, CSRF and roles enforced on every request."""
    bp = Blueprint(name, import_name, url_prefix=url_prefix, **kwargs)
    bp.before_request(_guard)
    bp.context_processor(_context)
    bp.after_request(_headers)
    return bp


def flash_error(err) -> None:
    """A domain error as a flash message naming its fields."""
    fields = "; ".join(f"{k}: {v}" for k, v in (getattr(err, "fields", None) or {}).items())
    flash(f"{getattr(err, 'message', str(err))}" + (f" ({fields})" if fields else ""), "error")


def flash_refusal(err) -> None:
    """A domain error refusing an admin action: rolled back; a 404 stays a 404 page, anything
    else is flashed on the page the action returns to."""
    db.session.rollback()
    if err.status == 404:
        raise err
    flash_error(err)


def control_views(bp: Blueprint, service, names, id_arg: str) -> None:
    """POST <prefix>/<id>/<name> for each name: `service.<name>(id)` (the API's function), then
    back to the object's page with the outcome flashed."""
    from envoi.errors import EnvoiError

    def make(name: str):
        def view(**ids):
            try:
                getattr(service, name)(ids[id_arg])
                flash(t("Saved."), "ok")
            except EnvoiError as err:
                flash_refusal(err)
            return redirect(url_for(".show", **ids), 303)

        view.__name__ = name
        return view

    for name in names:
        bp.post(f"/<id:{id_arg}>/{name}", endpoint=name)(make(name))


def t(key: str) -> str:
    """Translate in a view (flash messages)."""
    return translator(pick_lang(current_user()))(key)


def int_arg(name: str) -> int | None:
    raw = request.values.get(name, "")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 2**63 else None


def wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json"


def login_user(user) -> None:
    session.clear()  # a fresh session: no fixation, a fresh CSRF token
    session[SESSION_USER] = user.id
    session["admin_pw"] = user.password_hash[-16:]
    session.permanent = True
    csrf_token()


def logout_user() -> None:
    session.clear()


def figures_ttl() -> int:
    """How long the heavy aggregates of a page are kept (ADMIN_DASHBOARD_CACHE_SECONDS, default 60; 0: never)."""
    setting = current_app.config.get("ADMIN_DASHBOARD_CACHE_SECONDS")
    return 60 if setting is None else int(setting)


def cached(key: str, ttl: int, compute, fresh: bool = False):
    """`compute()` (JSON-ready), kept `ttl` seconds in Redis; computed directly if Redis is away or ttl is 0."""
    import json

    import redis

    client = None
    if ttl > 0:
        try:
            client = redis.Redis.from_url(current_app.config["REDIS_URL"], socket_timeout=1)
            hit = None if fresh else client.get(key)
            if hit:
                return json.loads(hit)
        except redis.RedisError:
            client = None
    value = compute()
    if client is not None:
        try:
            client.set(key, json.dumps(value), ex=ttl)
        except redis.RedisError:
            pass
    return value
