"""The admin shell: login/logout, language, dashboard, dev outbox, users and API tokens."""
from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa
from flask import abort, current_app, flash, redirect, render_template, request, session, url_for

from envoi.admin import charts
from envoi.admin.i18n import LANGS
from envoi.admin.shell import (admin_blueprint, cached, csrf_ok, current_user, figures_ttl, flash_error, int_arg,
                               login_user, logout_user, role, safe_next, t)
from envoi.auth import services as auth
from envoi.errors import EnvoiError
from envoi.extensions import db, limiter
from envoi.types import utcnow

bp = admin_blueprint("admin", __name__, "/admin", static_folder="static", static_url_path="/static")

PAGE = 50


def _login_rate() -> str:
    return current_app.config["ADMIN_LOGIN_RATE"]


# --------------------------------------------------------------------------- session

@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_rate, methods=["POST"], deduct_when=lambda response: response.status_code != 303,
               error_message="too many login attempts; try again in a minute")
def login():
    """Email and password; only failed attempts count against the per-address rate limit."""
    nxt = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user() is not None:
            return redirect(nxt)
        return render_template("admin/login.html", next=nxt, error=None, email="")
    email = (request.form.get("email") or "").strip()
    if not csrf_ok(request.form.get("_csrf")):
        return render_template("admin/login.html", next=nxt, email=email,
                               error="missing or invalid CSRF token: reload the page"), 400
    user = auth.check_password(email, request.form.get("password") or "") if email else None
    if user is None:
        return render_template("admin/login.html", next=nxt, email=email, error=t("Wrong email or password.")), 401
    login_user(user)
    return redirect(nxt, 303)


@bp.post("/logout")
@role("viewer")
def logout():
    logout_user()
    return redirect(url_for("admin.login"), 303)


@bp.post("/lang")
def set_lang():
    """Choose the UI language: kept in the session, and as the user's setting when logged in."""
    lang = request.form.get("lang")
    if not csrf_ok(request.form.get("_csrf")) or lang not in (*LANGS, ""):
        abort(400, "invalid language or CSRF token")
    session["admin_lang"] = lang or None
    user = current_user()
    if user is not None:
        auth.set_user_language(user.id, lang or None)
    return redirect(safe_next(request.form.get("next")), 303)


# --------------------------------------------------------------------------- dashboard

def _day(column):
    if db.session.get_bind().dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.substr(column, 1, 10)


CACHE_KEY = "envoi:admin:dashboard:v1"


def _cached_aggregates(fresh: bool = False) -> dict:
    """The contact aggregates, computed at most once per ADMIN_DASHBOARD_CACHE_SECONDS (Redis).

    Counting a million rows by status is a full pass over the table: exact, but too slow to
    repeat on every page view. The page says when its figures were computed."""
    return cached(CACHE_KEY, figures_ttl(), _aggregates, fresh)


def _aggregates(now=None) -> dict:
    from contacts.models import ConsentEvent, Contact

    now = now or utcnow()
    by_status: dict[str, dict[str, int]] = {"email": {}, "sms": {}}
    # One pass over the table for both channels (a page must not scan it twice).
    for email, sms, n in db.session.execute(
            sa.select(Contact.email_status, Contact.sms_status, sa.func.count())
            .where(Contact.erased_at.is_(None)).group_by(Contact.email_status, Contact.sms_status)):
        by_status["email"][email] = by_status["email"].get(email, 0) + n
        by_status["sms"][sms] = by_status["sms"].get(sms, 0) + n
    since = (now - timedelta(days=29)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = _day(ConsentEvent.recorded_at)
    rows = db.session.execute(
        sa.select(day, ConsentEvent.kind, sa.func.count())
        .where(ConsentEvent.recorded_at >= since, ConsentEvent.kind.in_(("requested", "granted")),
               ConsentEvent.topic_id.is_(None))
        .group_by(day, ConsentEvent.kind)).all()
    days = [(since + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(30)]
    counts = {(d, k): n for d, k, n in rows}
    requested = [counts.get((d, "requested"), 0) for d in days]
    granted = [counts.get((d, "granted"), 0) for d in days]
    return {
        "by_status": by_status, "days": days, "requested": requested, "granted": granted,
        "requested_total": sum(requested), "granted_total": sum(granted),
        "rate": (sum(granted) / sum(requested)) if sum(requested) else None,
        "computed_at": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def _dashboard_data(fresh: bool = False) -> dict:
    from campaigns import dispatch
    from campaigns.admin import campaign_stats
    from campaigns.models import Campaign

    running = db.session.scalars(sa.select(Campaign).where(Campaign.status == "sending")
                                 .order_by(Campaign.id.desc()).limit(10)).all()
    last = db.session.scalars(sa.select(Campaign).where(Campaign.status.in_(("sent", "cancelled", "paused")))
                              .order_by(Campaign.id.desc()).limit(5)).all()
    return {**_cached_aggregates(fresh),
            "running": [(c, dispatch.stats(c.id)) for c in running],
            "last": [(c, campaign_stats(c.id, c.status)) for c in last]}


@bp.get("/")
def dashboard():
    data = _dashboard_data(fresh=request.args.get("fresh") == "1")
    chart = charts.bars([d[5:] for d in data["days"]], {t("Requested"): data["requested"],
                                                         t("Confirmed"): data["granted"]},
                        title=t("Signups, last 30 days"))
    return render_template("admin/dashboard.html", chart=chart, **data)


# --------------------------------------------------------------------------- dev outbox

LINK = re.compile(r"""https?://[^\s"'<>]+""")


@bp.get("/outbox")
@role("marketer")
def outbox():
    """Every message the dev outbox channel 'sent', newest first (keyset pages by id)."""
    from campaigns.models import OutboxMessage as M

    before = int_arg("before")
    q = sa.select(M.id, M.channel, M.to, M.subject, M.body, M.created_at).order_by(M.id.desc()).limit(PAGE + 1)
    if request.args.get("to"):
        q = q.where(M.to == request.args["to"].strip().lower())
    if before:
        q = q.where(M.id < before)
    rows = db.session.execute(q).all()
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    return render_template("admin/outbox.html", rows=rows, next_before=rows[-1].id if more else None,
                           configured={"email": bool(current_app.config.get("SMTP_URL")),
                                       "sms": bool(current_app.config.get("TWILIO_ACCOUNT_SID"))})


@bp.get("/outbox/<id:message_id>")
@role("marketer")
def outbox_message(message_id: int):
    from campaigns.models import OutboxMessage

    message = db.session.get(OutboxMessage, message_id)
    if message is None:
        abort(404)
    links = []
    for url in LINK.findall((message.html or "") + "\n" + (message.body or "")):
        url = url.replace("&amp;", "&").rstrip(".,)")
        if url not in links:
            links.append(url)
    return render_template("admin/outbox_message.html", m=message, links=links)


@bp.get("/outbox/<id:message_id>/html")
@role("marketer")
def outbox_html(message_id: int):
    """The HTML part alone, for the sandboxed iframe of the message page; links open the top page."""
    from campaigns.models import OutboxMessage

    message = db.session.get(OutboxMessage, message_id)
    if message is None or not message.html:
        abort(404)
    response = current_app.response_class('<base target="_top">' + message.html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = "sandbox allow-popups allow-top-navigation-by-user-activation; " \
                                                  "script-src 'none'"
    return response


# --------------------------------------------------------------------------- users and tokens

@bp.route("/users", methods=["GET", "POST"])
@role("admin")
def users():
    if request.method == "POST":
        action = request.form.get("action", "create")
        try:
            if action == "create":
                user, password = auth.create_user(request.form.get("email", ""), request.form.get("role", ""),
                                                  request.form.get("password") or None)
                flash(f"{user.email}: {password}" if not request.form.get("password") else t("Saved."), "ok")
            else:
                uid = int_arg("user_id")
                if uid is None:
                    abort(400)
                auth.set_user_active(uid, action == "activate")
                flash(t("Saved."), "ok")
        except EnvoiError as err:
            flash_error(err)
        return redirect(url_for("admin.users"), 303)
    return render_template("admin/users.html", users=auth.list_users())


@bp.route("/tokens", methods=["GET", "POST"])
@role("admin")
def tokens():
    new_token = None
    if request.method == "POST":
        try:
            if request.form.get("action") == "revoke":
                token_id = int_arg("token_id")
                if token_id is None:
                    abort(400)
                auth.revoke_token(token_id)
                flash(t("Saved."), "ok")
                return redirect(url_for("admin.tokens"), 303)
            _, new_token = auth.create_token(request.form.get("email", ""), request.form.get("name") or "default")
        except EnvoiError as err:
            flash_error(err)
            return redirect(url_for("admin.tokens"), 303)
    return render_template("admin/tokens.html", tokens=auth.list_tokens(), users=auth.list_users(),
                           new_token=new_token)


@bp.app_template_filter("when")
def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""
