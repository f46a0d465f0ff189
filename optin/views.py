"""Public pages: /forms/<slug>, /confirm/<token>, /unsubscribe/<token>, /preferences/<token>,
/webhooks/twilio/inbound. Views parse input and call one service."""
from __future__ import annotations

import hmac
import io
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

from flask import (Blueprint, Response, current_app, g, jsonify, make_response, redirect, render_template, request,
                   session)
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.exceptions import TooManyRequests

from contacts.models import AttributeDefinition
from envoi.errors import NotFound, ValidationError, nul_fields
from envoi.extensions import db, limiter
from envoi.useragents import is_machine
from optin import ratelimit, services, tokens
from optin.i18n import lang_of, pick_lang, texts
from optin.models import EMBED_SOURCES, Form

bp = Blueprint("optin", __name__)

START_SALT = "envoi.optin.form-start.v1"
START_MAX_AGE = 24 * 3600  # a signup page left open longer must be reloaded
FIELD_TYPES = {"email": "email", "phone": "tel", "birth_date": "date", "headcount": "number"}
ATTRIBUTE_INPUTS = {"string": "text", "number": "number", "boolean": "checkbox", "date": "date"}
AUTOCOMPLETE = {"email": "email", "phone": "tel", "first_name": "given-name", "last_name": "family-name",
                "address": "street-address", "postal_code": "postal-code", "city": "address-level2",
                "country": "country", "birth_date": "bday", "company_name": "organization",
                "salutation": "honorific-prefix"}


def _ip_rate() -> str:
    return current_app.config["SIGNUP_RATE_PER_IP"]


def _view_rate() -> str:
    return current_app.config["FORM_VIEW_RATE_PER_IP"]


# --------------------------------------------------------------------------- helpers

@lru_cache(maxsize=8)
def _start_serializer(secret_key: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret_key, salt=START_SALT)  # built once: its checks run a JSON dump


def start_token(form_id: int, issued_at: float | None = None) -> str:
    """The `_token` of a form page: which form, and when it was shown (minimum fill time)."""
    serializer = _start_serializer(current_app.config["SECRET_KEY"])
    return serializer.dumps([int(form_id), round(time.time() if issued_at is None else issued_at, 3)])


def _read_start_token(value, form_id: int) -> float | None:
    """When the page was shown, or None for a missing, tampered or other form's token."""
    if not isinstance(value, str) or not value:
        return None
    try:
        payload = _start_serializer(current_app.config["SECRET_KEY"]).loads(value)
    except BadSignature:
        return None
    if not (isinstance(payload, list) and len(payload) == 2 and payload[0] == form_id
            and isinstance(payload[1], (int, float)) and not isinstance(payload[1], bool)):
        return None
    return float(payload[1])


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def _csrf_ok(value) -> bool:
    expected = session.get("csrf")
    return bool(expected) and isinstance(value, str) and hmac.compare_digest(expected, value)


@lru_cache(maxsize=64)
def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


# The signup helpers take the request object: Flask's, or the one the signup fast path builds.

def _is_own_origin(origin: str, req) -> bool:
    """The public URL's origin (ENVOI_BASE_URL) or the one this request was sent to."""
    return origin == _origin_of(current_app.config["BASE_URL"]) or origin == f"{req.scheme}://{req.host}".lower()


def _wants_json(req=request) -> bool:
    return req.is_json or "application/json" in (req.headers.get("Accept") or "") \
        or req.accept_mimetypes.best == "application/json"


def _payload(req) -> dict:
    if req.is_json:
        body = req.get_json(silent=True)
        if not isinstance(body, dict):
            raise ValidationError("expected a JSON object", {"_": "expected a JSON object"})
        return body
    return {key: req.form.get(key) for key in req.form.keys() if key is not None}


def _context(data: dict | None = None, req=request) -> dict:
    page = (data or {}).get("page")
    if not isinstance(page, str) or urlsplit(page).scheme not in ("http", "https"):
        page = req.referrer
    return {"ip": req.remote_addr, "user_agent": (req.user_agent.string or "")[:500],
            "page_url": (page or "")[:1000] or None}


def _page(template: str, status: int = 200, **ctx):
    lang = ctx.pop("lang", None) or pick_lang()
    response = make_response(render_template(template, lang=lang, t=texts(lang), **ctx), status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"  # links carry tokens
    return response


def _message(title_key: str, text_key: str, status: int = 200, lang: str | None = None, **extra):
    lang = lang or pick_lang()
    t = texts(lang)
    return _page("optin/message.html", status, lang=lang, title=t[title_key], text=t[text_key], **extra)


def _cors_headers(response: Response, origin: str | None, form_page: bool = True) -> Response:
    """A form page's answer varies with Origin; an allowed site's page may read it."""
    if form_page:
        response.vary.add("Origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
    return response


@bp.after_request
def _cors(response: Response):
    origin = g.pop("cors_origin", None)
    form_page = request.endpoint == "optin.form_page"
    if form_page and origin is None and not g.pop("origin_checked", False) and request.headers.get("Origin"):
        # The view did not run (rate limited before it): an allowed page must still read the answer.
        form = db.session.scalar(db.select(Form).where(Form.slug == (request.view_args or {}).get("slug")))
        origin = _cross_origin_check(form, request)[1] if form is not None else None
    return _cors_headers(response, origin, form_page)


# --------------------------------------------------------------------------- forms

def _fields(form: Form, t: dict) -> list[dict]:
    required = services.required_fields(form)
    out = [{"name": name, "label": t[name], "type": FIELD_TYPES.get(name, "text"), "required": name in required,
            "autocomplete": AUTOCOMPLETE.get(name, "on")} for name in form.fields]
    if form.attributes:
        defs = {a.key: a for a in db.session.query(AttributeDefinition)
                .filter(AttributeDefinition.key.in_(form.attributes))}
        for key in form.attributes:
            attr = defs.get(key)
            out.append({"name": f"attributes.{key}", "label": (attr.label if attr and attr.label else key),
                        "type": ATTRIBUTE_INPUTS.get(attr.type if attr else "string", "text"), "required": False,
                        "autocomplete": "off"})
    return out


def _success_message(form: Form, t: dict) -> str:
    return t["check_inbox"] if form.double_opt_in else t["subscribed"]


def _form_json(form: Form, lang: str) -> dict:
    t = texts(lang)
    return {"slug": form.slug, "title": form.title, "lang": lang,
            "fields": [{k: f[k] for k in ("name", "label", "type", "required")} for f in _fields(form, t)],
            "channels": list(form.channels or []), "consent_text": form.consent_text,
            "consent_version": form.consent_version, "popup": dict(form.popup or {}), "honeypot": "website",
            "token": start_token(form.id), "submit_label": t["submit"],
            "success_message": _success_message(form, t)}


def _render_form(form: Form, lang: str, status: int = 200, errors: dict | None = None, values: dict | None = None,
                 notice: str | None = None):
    t = texts(lang)
    response = _page("optin/form.html", status, lang=lang, form=form, fields=_fields(form, t), errors=errors or {},
                     values=values or {}, token=start_token(form.id), csrf=_csrf_token(), notice=notice)
    # No token in this URL; and under "no-referrer" a browser posts the form with `Origin: null`,
    # which the cross-origin check refuses.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _cross_origin_check(form: Form, req) -> tuple[bool, str | None]:
    """(allowed, cors origin). A browser names the page's origin on cross-origin requests; only
    the form's allowed origins may use it from their pages."""
    origin = req.headers.get("Origin")
    if origin is None:
        return True, None
    origin = origin.lower()
    if _is_own_origin(origin, req):
        return True, None
    if origin in (form.allowed_origins or []):
        return True, origin
    return False, None


@bp.route("/forms/<slug>", methods=["GET", "POST", "OPTIONS"])
@limiter.exempt  # POSTs are counted per IP by _Throttle, with the per-address limit, in one round trip
def form_page(slug: str):
    """The hosted signup page (HTML or, for the embed script, JSON) and the signup itself."""
    if request.method == "POST":
        return _post_signup(slug)
    form = services.form_by_slug(slug)
    g.origin_checked = True
    allowed, cors = _cross_origin_check(form, request)
    if request.method == "OPTIONS":
        if not allowed:
            return Response(status=403)
        response = Response(status=204)
        if cors:
            g.cors_origin = cors
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Accept"
            response.headers["Access-Control-Max-Age"] = "600"
        return response
    lang = pick_lang()
    if request.accept_mimetypes.best == "application/json":
        if cors:
            g.cors_origin = cors
        response = jsonify(_form_json(form, lang))
        response.headers["Cache-Control"] = "no-store"
        return response  # the embed script loading: not a view (it counts one when it shows the form)
    response = _render_form(form, lang)
    if request.method == "GET" and _seen_by_a_person():
        services.record_view(form.id, "hosted")
    return response


def _seen_by_a_person() -> bool:
    """Not a machine's user agent, nor a browser's speculative prefetch of the page."""
    purpose = " ".join(request.headers.get(h, "") for h in ("Sec-Purpose", "Purpose", "X-Moz"))
    return "prefetch" not in purpose.lower() and not is_machine(request.user_agent.string)


@bp.post("/forms/<slug>/views")
@limiter.limit(_view_rate, error_message="too many requests from this address; try again later")
def form_viewed(slug: str):
    """The embed script's beacon: it showed the form (`source=inline`, or `popup` when the popup
    opened). Only from the form's allowed origins (a browser always names the page's origin on
    such a POST); counted unless a machine sent it; 204, no cookie, nothing about the visitor kept."""
    form, _ = services.signup_form(slug)  # the signup's per-process copy: no read for most beacons
    allowed, cors = _cross_origin_check(form, request)
    if not allowed or request.headers.get("Origin") is None:
        return jsonify({"error": "this site may not use this form", "fields": {"Origin": "not allowed"}}), 403
    g.cors_origin = cors
    source = request.form.get("source")
    if source not in EMBED_SOURCES:
        raise ValidationError("invalid view", {"source": f"expected one of {', '.join(EMBED_SOURCES)}"})
    if _seen_by_a_person():
        services.record_view(form.id, source)
    return Response(status=204)


class _Signup:
    """One signup POST's state: the CORS origin once the Origin is checked, and its one Redis round
    trip as the service's throttle (this IP's windows: every POST counts; the addresses' windows;
    the forms' version: a form edited since the cached copy was read is FormChanged). Counts are
    taken once and a refusal is kept, so the Flask route carries on with the state the fast path
    handed over (HANDOFF) without counting anything twice."""

    def __init__(self, ip: str | None):
        self.ip = ip or "-"
        self.version: int | None = None  # the forms' version the signup's copy was read at
        self.cors: str | None = None
        self.ip_counted = False
        self.retry_after = 0
        self.known: dict = {}
        self.error: BaseException | None = None  # raised in the fast path: the Flask route raises it again

    def __call__(self, pairs: list[tuple[str, str]]) -> dict:
        todo = [pair for pair in pairs if pair not in self.known]
        if not self.retry_after and (not self.ip_counted or todo):
            outcome = ratelimit.hit(None if self.ip_counted else self.ip, todo)
            self.ip_counted = True
            self.retry_after = outcome.retry_after
            if not self.retry_after:
                self.known.update(outcome.allowed)
                if self.version is not None and outcome.version != self.version:
                    raise services.FormChanged()
        if self.retry_after:
            raise TooManyRequests("too many signups from this address; try again later",
                                  retry_after=self.retry_after)
        return {pair: self.known[pair] for pair in pairs}


@dataclass
class _Outcome:
    """What a signup POST came to, before any page: "done" (stored, throttled or a bot: one
    answer), or a refusal: "origin", "csrf", "expired", "invalid" (with the error)."""
    kind: str
    form: Form
    data: dict = field(default_factory=dict)
    error: ValidationError | None = None


def _attempt_signup(slug: str, req, lang: str, state: _Signup, csrf_ok) -> _Outcome:
    """A signup POST, up to its answer; shared by the Flask route and the fast path. `csrf_ok(value)`
    checks the hosted page's session token (None: no session here, a refusal)."""
    form, version = services.signup_form(slug)
    if not state.ip_counted:  # once counted, the state knows the version (None: redone on a fresh copy)
        state.version = version
    try:
        return _signup_outcome(form, req, lang, state, csrf_ok)
    except services.FormChanged:
        # Edited since this process cached it: the signup is redone on the form as it is now
        # (the counts already taken are reused, not taken twice).
        form, _ = services.signup_form(slug, fresh=True)
        state.version = None
        return _signup_outcome(form, req, lang, state, csrf_ok)


def _signup_outcome(form: Form, req, lang: str, state: _Signup, csrf_ok) -> _Outcome:
    outcome = _signup_checks(form, req, lang, state, csrf_ok)
    if not state.ip_counted:
        state([])  # nothing stored (bot, refused, invalid): the POST still counts for its IP
    return outcome


def _signup_checks(form: Form, req, lang: str, state: _Signup, csrf_ok) -> _Outcome:
    allowed, state.cors = _cross_origin_check(form, req)
    if not allowed:
        return _Outcome("origin", form)
    data = _payload(req)
    if req.headers.get("Origin") is None and not req.is_json and not (csrf_ok and csrf_ok(data.get("_csrf"))):
        # A plain form post without Origin: only our own page (with its session cookie) may send it.
        return _Outcome("csrf", form, data)
    issued = _read_start_token(data.get("_token"), form.id)
    if issued is not None and time.time() - issued > START_MAX_AGE:
        return _Outcome("expired", form, data)
    too_fast = issued is None or time.time() - issued < current_app.config["SIGNUP_MIN_SECONDS"]
    if data.get("website") or too_fast:
        return _Outcome("done", form, data)  # a bot: same answer, nothing stored
    try:
        services.request_optin(form, data, _context(data, req), lang, throttle=state)
    except ValidationError as err:
        return _Outcome("invalid", form, data, err)
    return _Outcome("done", form, data)


def _post_signup(slug: str):
    state = request.environ.get(HANDOFF) or _Signup(request.remote_addr)
    g.origin_checked = True
    lang = pick_lang()
    try:
        if state.error is not None:
            raise state.error
        outcome = _attempt_signup(slug, request, lang, state, _csrf_ok)
    finally:
        g.cors_origin = state.cors
    form, as_json, t = outcome.form, _wants_json(), texts(lang)
    if outcome.kind == "done":
        return _signup_done(form, lang, as_json)
    if outcome.kind == "origin":
        if as_json:
            return jsonify({"error": "this site may not use this form", "fields": {"Origin": "not allowed"}}), 403
        return _message("error_title", "origin_refused", 403, lang=lang)
    if outcome.kind == "csrf":
        if as_json:
            return jsonify({"error": t["session_expired"], "fields": {"_csrf": "missing or invalid"}}), 400
        return _render_form(form, lang, 400, notice=t["session_expired"], values=outcome.data)
    if outcome.kind == "expired":
        if as_json:
            return jsonify({"error": t["session_expired"], "fields": {"_token": "expired: reload the form"}}), 422
        return _render_form(form, lang, 422, notice=t["session_expired"], values=outcome.data)
    err = outcome.error
    if as_json:
        return jsonify({"error": err.message, "fields": err.fields}), 422
    return _render_form(form, lang, 422, errors=err.fields, values=outcome.data, notice=t["form_errors"])


def _signup_done(form: Form, lang: str, as_json: bool):
    t = texts(lang)
    message, redirect_url = _success_message(form, t), form.redirect_url
    if as_json:
        return jsonify({"status": "ok", "message": message, "redirect_url": redirect_url})
    if redirect_url:
        return redirect(redirect_url, 303)  # the form's own URL, never one from the request
    return _page("optin/message.html", lang=lang, title=t["thanks_title"], text=message)


# --------------------------------------------------------------------------- confirm

def _token_lang(token: str) -> str:
    """The page language: `?lang=`, else the signup's, else the browser's."""
    return pick_lang()


@bp.get("/confirm/<token>")
def confirm_page(token: str):
    """Never confirms: link scanners prefetch GETs. The page POSTs (by script, or a button)."""
    lang = _token_lang(token)
    try:
        tokens.read_confirm_token(token)
    except tokens.TokenExpired:
        return _page("optin/expired.html", 410, lang=lang, token=token)
    except tokens.TokenInvalid:
        return _message("error_title", "invalid_link", 400, lang=lang)
    return _page("optin/confirm.html", lang=lang, token=token)


@bp.post("/confirm/<token>")
def confirm(token: str):
    lang = _token_lang(token)
    try:
        form = services.confirm_subscription(token, _context())
    except tokens.TokenExpired:
        return _page("optin/expired.html", 410, lang=lang, token=token)
    except tokens.TokenInvalid:
        return _message("error_title", "invalid_link", 400, lang=lang)
    except NotFound:
        return _message("error_title", "invalid_link", 404, lang=lang)
    if form is not None and form.confirm_redirect_url:
        return redirect(form.confirm_redirect_url, 303)
    return _message("confirmed_title", "confirmed_text", lang=lang)


@bp.post("/confirm/<token>/resend")
@limiter.limit(_ip_rate, error_message="too many requests from this address; try again later")
def resend(token: str):
    lang = _token_lang(token)
    try:
        services.resend_confirmation(token, lang)
    except tokens.TokenExpired:  # pragma: no cover - handled inside the service
        pass
    except tokens.TokenInvalid:
        return _message("error_title", "invalid_link", 400, lang=lang)
    return _message("expired_title", "resent_text", lang=lang)


# --------------------------------------------------------------------------- unsubscribe

def _campaign_param() -> int | None:
    raw = request.args.get("c", "")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 2**63 else None


def _masked(address: str | None) -> str:
    if not address:
        return ""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:2]}{'•' * max(1, len(local) - 2)}@{domain}"
    return f"{address[:4]}{'•' * max(1, len(address) - 6)}{address[-2:]}"


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str):
    try:
        contact_id, channel = tokens.read_unsubscribe_token(token)
    except tokens.TokenInvalid:
        return _message("error_title", "invalid_link", 400)
    contact = services.contact_for_token(contact_id)
    lang = pick_lang(lang_of(contact.language) if contact is not None else None) if "lang" not in request.args \
        else pick_lang()
    if contact is None or getattr(contact, f"{channel}_status") == "unsubscribed":
        return _message("unsub_title", "unsub_done", lang=lang)
    t = texts(lang)
    intro = t[f"unsub_intro_{channel}"].format(address=_masked(contact.email if channel == "email" else contact.phone))
    return _page("optin/unsubscribe.html", lang=lang, intro=intro, action=request.full_path.rstrip("?"),
                 preferences_url=tokens.preferences_url(contact_id))


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str):
    """RFC 8058 one-click: `List-Unsubscribe=One-Click`, no cookie, no CSRF; unsubscribes at once."""
    try:
        contact_id, channel = tokens.read_unsubscribe_token(token)
    except tokens.TokenInvalid:
        return _message("error_title", "invalid_link", 400)
    services.unsubscribe(contact_id, channel, _context(), campaign_id=_campaign_param(), method="link")
    return _message("unsub_title", "unsub_done")


# --------------------------------------------------------------------------- preferences

@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str):
    try:
        contact_id = tokens.read_preferences_token(token)
    except tokens.TokenInvalid:
        return _message("error_title", "invalid_link", 400)
    contact = services.contact_for_token(contact_id)
    lang = pick_lang(lang_of(contact.language) if contact is not None else None)
    t = texts(lang)
    if contact is None:
        return _message("pref_title", "pref_erased", lang=lang)
    notice = None
    status = 200
    if request.method == "POST":
        if not _csrf_ok(request.form.get("_csrf")):
            notice, status = t["session_expired"], 400
        else:
            action = request.form.get("action", "save")
            if action == "export":
                from contacts.services import export_contact

                body = json.dumps(export_contact(contact_id), ensure_ascii=False, indent=2)
                response = Response(body, mimetype="application/json")
                response.headers["Content-Disposition"] = 'attachment; filename="my-data.json"'
                response.headers["Cache-Control"] = "no-store"
                return response
            if action == "erase":
                if request.form.get("confirm") != "yes":
                    notice, status = t["pref_erase_needs_confirm"], 422
                else:
                    from contacts.services import erase_contact

                    # Withdraw every consent first, so the timeline says why messages stopped.
                    services.update_preferences(contact_id, {"email": False, "sms": False}, set(), _context())
                    erase_contact(contact_id, method="preferences")
                    return _message("pref_title", "pref_erased", lang=lang)
            else:
                channels = {"email": request.form.get("email") == "on", "sms": request.form.get("sms") == "on"}
                topics = set(request.form.getlist("topics"))
                services.update_preferences(contact_id, channels, topics, _context())
                from campaigns.tracking import set_tracking_refused

                set_tracking_refused(contact_id, request.form.get("no_tracking") == "on")
                notice = t["pref_saved"]
    prefs = services.preferences(contact_id)
    return _page("optin/preferences.html", status, lang=lang, prefs=prefs, csrf=_csrf_token(), notice=notice,
                 action=request.path)


# --------------------------------------------------------------------------- Twilio inbound

@bp.post("/webhooks/twilio/inbound")
def twilio_inbound():
    """STOP / START / HELP keywords. The signature is checked before anything is read."""
    from twilio.twiml.messaging_response import MessagingResponse

    from optin.twilio import check_twilio_signature

    params = check_twilio_signature()
    reply = services.sms_keyword(params.get("From", ""), params.get("Body", ""), params)
    twiml = MessagingResponse()
    if reply:
        twiml.message(reply)
    return Response(str(twiml), mimetype="application/xml")


# --------------------------------------------------------------------------- the signup fast path

HANDOFF = "envoi.optin.signup"  # environ key: the fast path's _Signup, left to the Flask route
FAST_BODY_MAX = 64 * 1024
_FORM_POST = re.compile(r"/forms/([a-z0-9][a-z0-9_-]{0,99})")
_FAST_TYPES = ("application/x-www-form-urlencoded", "application/json")


class SignupFastPath:
    """WSGI middleware: the signup POST the embed script sends (fetch, JSON answer), answered in
    front of Flask — its request machinery costs more than the rest of a signup — through the same
    code as the Flask route (_attempt_signup: origin check, token, honeypot, fill time, the
    services' validation, rate limits and storage) with the same answer (tests compare them).
    Anything else goes on to Flask: other methods or paths, an HTML answer, another content type,
    a large or chunked body, a NUL character, and every outcome but "done"; when something was
    already counted or raised, the _Signup goes along (HANDOFF) so that nothing is counted twice
    and the error answer is Flask's."""

    def __init__(self, wsgi_app, flask_app):
        self.wsgi_app = wsgi_app
        self.flask_app = flask_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path[:7] == "/forms/" and environ.get("REQUEST_METHOD") == "POST":
            match = _FORM_POST.fullmatch(path)
            if match is not None:
                response = self._answer(match.group(1), environ)
                if response is not None:
                    return response(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def _plain_routing(self) -> bool:
        """/forms/<slug> reaches the route whatever the host (no host checks or matching)."""
        app = self.flask_app
        return app.config["TRUSTED_HOSTS"] is None and not app.url_map.host_matching and not app.subdomain_matching

    def _answer(self, slug: str, environ) -> Response | None:
        content_type = environ.get("CONTENT_TYPE", "")
        length = environ.get("CONTENT_LENGTH", "")
        if not (length.isdigit() and 0 < int(length) <= FAST_BODY_MAX) \
                or content_type.partition(";")[0].strip().lower() not in _FAST_TYPES \
                or environ.get("HTTP_TRANSFER_ENCODING") or not self._plain_routing():
            return None
        body = environ["wsgi.input"].read(int(length))
        environ["wsgi.input"] = io.BytesIO(body)
        with self.flask_app.app_context():
            req = self.flask_app.request_class(environ)
            try:
                plain = _wants_json(req) and not nul_fields(req)
                lang = pick_lang(req=req)
            except Exception:  # noqa: BLE001 - nothing done yet: Flask reads the request again and answers
                plain = False
            if not plain:
                environ["wsgi.input"] = io.BytesIO(body)
                return None
            state = _Signup(req.remote_addr)
            try:
                outcome = _attempt_signup(slug, req, lang, state, None)
            except Exception as err:  # noqa: BLE001 - Flask's error handlers answer it
                state.error = err
                outcome = None
            if outcome is None or outcome.kind != "done":
                environ["wsgi.input"] = io.BytesIO(body)
                environ[HANDOFF] = state
                return None
            return _cors_headers(_signup_done(outcome.form, lang, True), state.cors)


@bp.record_once
def _mount(state) -> None:
    """Every app that registers these routes answers the embed's signups through the fast path first."""
    state.app.wsgi_app = SignupFastPath(state.app.wsgi_app, state.app)
