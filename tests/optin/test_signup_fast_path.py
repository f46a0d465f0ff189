"""The signup fast path (optin/views.py SignupFastPath) answers the embed's signup POSTs in front of
Flask: the same requests sent through it and through the Flask route alone get the same status,
headers and body; refusals are left to Flask, and nothing is counted or stored twice."""
from __future__ import annotations

import json
import time

import flask
import sqlalchemy as sa
from werkzeug.test import EnvironBuilder

from contacts import services as contacts
from contacts.models import ConsentEvent, Contact
from envoi.extensions import db
from optin.views import SignupFastPath, start_token
from tests.conftest import configured
from tests.optin.conftest import old_token

SITE = "https://shop.example.org"


def _fast_path(app) -> SignupFastPath:
    wsgi = app.wsgi_app
    while not isinstance(wsgi, SignupFastPath):
        wsgi = wsgi.wsgi_app  # other middleware (the tracking fast path) wraps it
    return wsgi


class _FlaskRequests:
    """How many requests reached Flask's request handling (its own `request_started` signal)."""

    def __init__(self, app):
        self.app, self.count = app, 0

    def __enter__(self):
        flask.request_started.connect(self._started, self.app)
        return self

    def __exit__(self, *exc):
        flask.request_started.disconnect(self._started, self.app)

    def _started(self, sender, **extra):
        self.count += 1


def _call(wsgi, slug: str, *, body=None, json_body=None, headers=None, query: str = "", remote: str = "127.0.0.1",
          cookie: str | None = None) -> dict:
    hdrs = {"Accept": "application/json", **(headers or {})}
    if cookie:
        hdrs["Cookie"] = cookie
    kwargs = {"json": json_body} if json_body is not None else {"data": body,
                                                                "content_type": "application/x-www-form-urlencoded"}
    environ = EnvironBuilder(path=f"/forms/{slug}", method="POST", query_string=query, headers=hdrs,
                             environ_base={"REMOTE_ADDR": remote}, **kwargs).get_environ()
    got: dict = {}

    def start_response(status, headers, exc_info=None):
        got["status"] = status
        got["headers"] = sorted((k, v) for k, v in headers if k != "Retry-After")
        got["retry_after"] = dict(headers).get("Retry-After")

    got["body"] = b"".join(wsgi(environ, start_response))
    return got


def _count(model) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


def _form(make_form, **overrides):
    return make_form(allowed_origins=[SITE], redirect_url="https://example.org/thanks", **overrides)


def test_each_answer_is_the_flask_routes(app, make_form):
    form = _form(make_form, fields=["email", "first_name"])
    with app.app_context():
        contacts.upsert_contact({"email": "known@example.org"})
    fast = _fast_path(app)
    flask_only = fast.wsgi_app
    token = old_token(app, form["id"])
    with app.test_request_context():
        fresh = start_token(form["id"])
        expired = start_token(form["id"], time.time() - 2 * 24 * 3600)
    site = {"Origin": SITE}
    # (name, request for address n): each is sent twice, once through each path, with its own address.
    cases = [
        ("new address, from an allowed site", lambda n: dict(body=f"email=new{n}%40example.org&first_name=Ada"
                                                               f"&_token={token}&website=", headers=site)),
        ("known address", lambda n: dict(body=f"email=known%40example.org&_token={token}", headers=site)),
        ("JSON body, own origin, ?lang=fr", lambda n: dict(json_body={"email": f"json{n}@example.org", "_token": token},
                                                           headers={"Origin": "http://localhost"}, query="lang=fr")),
        ("French from Accept-Language", lambda n: dict(body=f"email=fr{n}%40example.org&_token={token}",
                                                       headers={**site, "Accept-Language": "fr-FR,fr;q=0.9"})),
        ("bad field", lambda n: dict(body=f"email=not-an-address{n}&_token={token}", headers=site)),
        ("field not collected", lambda n: dict(body=f"email=x{n}%40example.org&last_name=X&_token={token}",
                                               headers=site)),
        ("honeypot", lambda n: dict(body=f"email=bot{n}%40example.org&website=spam&_token={token}", headers=site)),
        ("too fast", lambda n: dict(body=f"email=fast{n}%40example.org&_token={fresh}", headers=site)),
        ("no token", lambda n: dict(body=f"email=notoken{n}%40example.org", headers=site)),
        ("expired token", lambda n: dict(body=f"email=old{n}%40example.org&_token={expired}", headers=site)),
        ("wrong origin", lambda n: dict(body=f"email=evil{n}%40example.org&_token={token}",
                                        headers={"Origin": "https://evil.example"})),
        ("no Origin, no CSRF token", lambda n: dict(body=f"email=csrf{n}%40example.org&_token={token}")),
        ("NUL character", lambda n: dict(body=f"email=nul{n}%40example.org&first_name=A%00&_token={token}",
                                         headers=site)),
        ("JSON that is not an object", lambda n: dict(json_body=["email"], headers=site)),
        ("unknown form", lambda n: dict(body=f"email=nobody{n}%40example.org&_token={token}", headers=site,
                                        slug="nope")),
    ]
    answers = {}
    for name, make in cases:
        pair = []
        for n, wsgi in enumerate((fast, flask_only)):
            kwargs = make(n)
            pair.append(_call(wsgi, kwargs.pop("slug", "news"), **kwargs))
        assert pair[0] == pair[1], name
        answers[name] = (int(pair[0]["status"][:3]), json.loads(pair[0]["body"]), dict(pair[0]["headers"]))
    ok = {"status": "ok", "message": answers["known address"][1]["message"], "redirect_url": "https://example.org/thanks"}
    for name in ("new address, from an allowed site", "known address", "honeypot", "too fast", "no token"):
        assert answers[name][:2] == (200, ok), name  # nothing tells a bot, a known and a new address apart
    assert answers["new address, from an allowed site"][2]["Access-Control-Allow-Origin"] == SITE
    assert answers["new address, from an allowed site"][2]["Vary"] == "Origin"
    assert answers["JSON body, own origin, ?lang=fr"][0] == 200
    assert "Access-Control-Allow-Origin" not in answers["JSON body, own origin, ?lang=fr"][2]
    assert answers["JSON body, own origin, ?lang=fr"][1]["message"] == answers["French from Accept-Language"][1]["message"]
    assert answers["French from Accept-Language"][1]["message"] != ok["message"]
    assert [answers[name][0] for name in ("bad field", "field not collected", "expired token", "wrong origin",
                                          "no Origin, no CSRF token", "NUL character", "JSON that is not an object",
                                          "unknown form")] == [422, 422, 422, 403, 400, 422, 422, 404]
    assert answers["field not collected"][1]["fields"] == {"last_name": "not collected by this form"}
    assert "Access-Control-Allow-Origin" not in answers["wrong origin"][2]
    assert all("Set-Cookie" not in headers for _, _, headers in answers.values())
    with app.app_context():
        stored = set(db.session.scalars(sa.select(Contact.email)))
        assert stored == {"known@example.org", "new0@example.org", "new1@example.org", "json0@example.org",
                          "json1@example.org", "fr0@example.org", "fr1@example.org"}
        # one requested event per signup; the known address got one (the second was within its limit window)
        assert _count(ConsentEvent) == 7


def test_the_fast_path_answers_a_signup_without_flask_and_leaves_refusals_to_it(app, make_form):
    form = _form(make_form)
    fast = _fast_path(app)
    token = old_token(app, form["id"])
    with _FlaskRequests(app) as flask_requests:
        answer = _call(fast, "news", body=f"email=a%40example.org&_token={token}", headers={"Origin": SITE})
        assert answer["status"] == "200 OK" and flask_requests.count == 0
        refused = _call(fast, "news", body=f"email=a%40example.org&_token={token}", headers={"Origin": "https://x.example"})
        assert refused["status"] == "403 FORBIDDEN" and flask_requests.count == 1
        page = _call(fast, "news", body=f"email=b%40example.org&_token={token}", headers={"Origin": SITE, "Accept": "text/html"})
        # the hosted page's answer: the form's redirect, from Flask
        assert page["status"] == "303 SEE OTHER" and flask_requests.count == 2
        assert dict(page["headers"])["Location"] == "https://example.org/thanks"


def test_a_post_handed_to_flask_counts_once_per_ip(app, make_form):
    """Refusals the fast path leaves to Flask carry the counts already taken: the per-IP limit
    refuses the (n+1)th POST, not an earlier one, and keeps CORS on the 429 for an allowed site."""
    form = _form(make_form)
    fast = _fast_path(app)
    token = old_token(app, form["id"])
    with configured(app, SIGNUP_RATE_PER_IP="3/minute"):
        answers = [_call(fast, "news", body=f"email=bad{i}&_token={token}", headers={"Origin": SITE})
                   for i in range(3)]
        assert [a["status"] for a in answers] == ["422 UNPROCESSABLE ENTITY"] * 3
        over_fast = _call(fast, "news", body=f"email=c%40example.org&_token={token}", headers={"Origin": SITE})
        over_flask = _call(fast.wsgi_app, "news", body=f"email=d%40example.org&_token={token}", headers={"Origin": SITE})
        elsewhere = _call(fast, "news", body=f"email=e%40example.org&_token={token}", headers={"Origin": SITE},
                          remote="10.9.8.7")
    assert over_fast == over_flask and over_fast["status"] == "429 TOO MANY REQUESTS"
    assert 1 <= int(over_fast["retry_after"]) <= 60
    assert dict(over_fast["headers"])["Access-Control-Allow-Origin"] == SITE
    assert json.loads(over_fast["body"]) == {"error": "too many signups from this address; try again later",
                                             "fields": {}}
    assert elsewhere["status"] == "200 OK"
    with app.app_context():
        assert set(db.session.scalars(sa.select(Contact.email))) == {"e@example.org"}


def test_the_hosted_page_with_its_session_goes_through_flask(app, client, make_form):
    """No Origin, a form post with the page's CSRF token: the fast path has no session, Flask checks it."""
    form = _form(make_form)
    page = client.get("/forms/news")
    csrf = page.data.decode().split('name="_csrf" value="', 1)[1].split('"', 1)[0]
    cookie = page.headers["Set-Cookie"].split(";", 1)[0]
    token = old_token(app, form["id"])
    with configured(app, SIGNUP_RATE_PER_IP="1/minute"), _FlaskRequests(app) as flask_requests:
        ok = _call(_fast_path(app), "news", body=f"email=page%40example.org&_token={token}&_csrf={csrf}", cookie=cookie)
        assert flask_requests.count == 1
        again = _call(_fast_path(app), "news", body=f"email=page2%40example.org&_token={token}&_csrf={csrf}",
                      cookie=cookie)
    assert ok["status"] == "200 OK" and json.loads(ok["body"])["status"] == "ok"
    assert again["status"] == "429 TOO MANY REQUESTS"  # counted once each, in whichever path
    with app.app_context():
        assert db.session.scalar(sa.select(Contact.email)) == "page@example.org"
