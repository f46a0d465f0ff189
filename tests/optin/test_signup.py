"""Signup on the hosted page and through the embed contract: bots, CSRF, CORS, rate limits,
fields the form does not collect, languages, 50 concurrent signups of one address."""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
import sqlalchemy as sa
from werkzeug.serving import make_server

from contacts import services as contacts
from contacts.models import Action, ConsentEvent, Contact
from envoi.extensions import db
from optin.models import Form
from tests.conftest import configured
from tests.optin.conftest import drain, old_token, signup


def _count(model=Contact):
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


def test_hosted_page_is_accessible_and_works_without_js(app, client, make_form):
    form = make_form()
    page = client.get("/forms/news", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    html = page.data.decode()
    assert 'name="viewport"' in html and '<html lang="en">' in html
    assert re.search(r'<label for="f-1">Email address', html) and 'id="f-1" name="email"' in html
    assert 'name="website"' in html and 'name="_token"' in html and 'name="_csrf"' in html
    assert "<script" not in html
    csrf = re.search(r'name="_csrf" value="([^"]+)"', html).group(1)
    data = {"_csrf": csrf, "_token": old_token(app, form["id"]), "email": "page@example.org", "website": ""}
    resp = client.post("/forms/news", data=data)
    assert resp.status_code == 200 and b"Thank you" in resp.data
    with app.app_context():
        assert db.session.scalar(sa.select(Contact.email_status)) == "pending"


def test_french_from_accept_language_and_lang_overrides(app, client, make_form):
    make_form()
    fr = client.get("/forms/news", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"}).data.decode()
    assert '<html lang="fr">' in fr and "Adresse e-mail" in fr and "S&#39;inscrire" in fr
    en = client.get("/forms/news?lang=en", headers={"Accept-Language": "fr-FR"}).data.decode()
    assert "Email address" in en
    doc = client.get("/forms/news?lang=fr", headers={"Accept": "application/json"}).get_json()
    assert doc["lang"] == "fr" and doc["fields"][0]["label"] == "Adresse e-mail"


def test_post_without_session_csrf_is_refused(app, client, make_form):
    form = make_form()
    resp = client.post("/forms/news", data={"_token": old_token(app, form["id"]), "email": "x@example.org"})
    assert resp.status_code == 400
    with app.app_context():
        assert _count() == 0


def test_json_contract_of_the_form(app, client, make_form):
    with app.app_context():
        contacts.define_attribute("shoe_size", "number", "Shoe size")
    make_form(fields=["email", "first_name"], attributes=["shoe_size"], popup={"trigger": "delay", "delay_seconds": 3},
              redirect_url="https://example.org/thanks")
    resp = client.get("/forms/news", headers={"Accept": "application/json"})
    assert resp.status_code == 200
    doc = resp.get_json()
    assert set(doc) == {"slug", "title", "lang", "fields", "channels", "consent_text", "consent_version", "popup",
                        "honeypot", "token", "submit_label", "success_message"}
    assert doc["fields"] == [
        {"name": "email", "label": "Email address", "type": "email", "required": True},
        {"name": "first_name", "label": "First name", "type": "text", "required": False},
        {"name": "attributes.shoe_size", "label": "Shoe size", "type": "number", "required": False}]
    assert doc["honeypot"] == "website" and doc["popup"]["trigger"] == "delay" and doc["popup"]["delay_seconds"] == 3
    assert doc["consent_version"] == "v1"
    assert client.get("/forms/nope", headers={"Accept": "application/json"}).status_code == 404


def test_json_signup_answers_the_same_for_known_and_unknown_addresses(app, client, make_form):
    form = make_form(redirect_url="https://example.org/thanks")
    with app.app_context():
        contacts.upsert_contact({"email": "known@example.org"})
    first = signup(client, app, form, {"email": "known@example.org"})
    second = signup(client, app, form, {"email": "new@example.org"})
    assert first.status_code == second.status_code == 200
    assert first.get_json() == second.get_json() == {
        "status": "ok", "message": first.get_json()["message"], "redirect_url": "https://example.org/thanks"}
    assert "inbox" in first.get_json()["message"]


def test_html_post_redirects_to_the_forms_url_only(app, client, make_form):
    form = make_form(redirect_url="https://example.org/thanks")
    resp = signup(client, app, form, {"email": "r@example.org", "redirect_url": "https://evil.example/"},
                  json=False, headers={"Origin": "http://localhost"})
    assert resp.status_code == 422  # redirect_url is not a field of the form
    resp = signup(client, app, form, {"email": "r@example.org"}, json=False, headers={"Origin": "http://localhost"})
    assert resp.status_code == 303 and resp.headers["Location"] == "https://example.org/thanks"


def test_signup_cannot_set_a_field_the_form_does_not_collect(app, client, make_form):
    form = make_form(fields=["email"])
    with app.app_context():
        contacts.define_attribute("vip", "boolean")
    for extra in ({"last_name": "Intruder"}, {"attributes.vip": "true"}, {"attributes": {"vip": True}},
                  {"email_status": "confirmed"}, {"tags": ["x"]}):
        resp = signup(client, app, form, {"email": "sneaky@example.org", **extra})
        assert resp.status_code == 422, extra
        body = resp.get_json()
        assert set(body) == {"error", "fields"}
        name = next(iter(extra)) if "attributes" != next(iter(extra)) else "attributes.vip"
        assert body["fields"][name] == "not collected by this form"
    with app.app_context():
        assert _count() == 0 and _count(ConsentEvent) == 0


def test_invalid_input_is_a_422_with_fields(app, client, make_form):
    form = make_form(fields=["email", "birth_date"])
    resp = signup(client, app, form, {"email": "not an address", "birth_date": "31/12/1990"})
    assert resp.status_code == 422
    assert set(resp.get_json()["fields"]) == {"email", "birth_date"}
    resp = signup(client, app, form, {"first_name": "x"})
    assert resp.status_code == 422
    resp = signup(client, app, form, {})
    assert resp.status_code == 422 and resp.get_json()["fields"] == {"email": "required"}
    html = signup(client, app, form, {"email": "bad"}, json=False, headers={"Origin": "http://localhost"})
    assert html.status_code == 422 and b'aria-invalid="true"' in html.data


def test_bots_get_the_same_answer_and_nothing_is_stored(app, client, make_form, smtp_server, worker):
    form = make_form()
    honeypot = signup(client, app, form, {"email": "bot1@example.org", "website": "http://spam.example"})
    fresh = client.get("/forms/news", headers={"Accept": "application/json"}).get_json()["token"]
    too_fast = client.post("/forms/news", json={"_token": fresh, "email": "bot2@example.org"},
                           headers={"Accept": "application/json"})
    no_token = client.post("/forms/news", json={"email": "bot3@example.org"}, headers={"Accept": "application/json"})
    forged = client.post("/forms/news", json={"_token": fresh[:-2] + "xx", "email": "bot4@example.org"},
                         headers={"Accept": "application/json"})
    human = signup(client, app, form, {"email": "human@example.org"})
    answers = [r.get_json() for r in (honeypot, too_fast, no_token, forged, human)]
    assert all(r.status_code == 200 for r in (honeypot, too_fast, no_token, forged, human))
    assert all(a == answers[-1] for a in answers)
    drain(worker)
    with app.app_context():
        assert db.session.scalars(sa.select(Contact.email)).all() == ["human@example.org"]
    assert [m["to"] for m in smtp_server.messages] == [["human@example.org"]]


def test_minimum_fill_time_counts_from_the_token(app, client, make_form):
    form = make_form()
    with configured(app, SIGNUP_MIN_SECONDS=0):
        token = client.get("/forms/news", headers={"Accept": "application/json"}).get_json()["token"]
        resp = client.post("/forms/news", json={"_token": token, "email": "quick@example.org"},
                           headers={"Accept": "application/json"})
    assert resp.status_code == 200
    with app.app_context():
        assert _count() == 1
    other = make_form(slug="other")
    resp = client.post("/forms/news", json={"_token": old_token(app, other["id"]), "email": "x@example.org"},
                       headers={"Accept": "application/json"})
    with app.app_context():
        assert _count() == 1  # a token of another form is a bot's


def test_rate_limit_per_ip(app, client, make_form):
    form = make_form()
    with configured(app, SIGNUP_RATE_PER_IP="3/minute"):
        answers = [signup(client, app, form, {"email": f"ip{i}@example.org"}) for i in range(5)]
        codes = [r.status_code for r in answers]
        other_ip = signup(client, app, form, {"email": "far@example.org"},
                          environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code
    assert codes == [200, 200, 200, 429, 429]
    assert other_ip == 200
    assert set(answers[-1].get_json()) == {"error", "fields"}
    with app.app_context():
        form_row = db.session.get(Form, form["id"])
        form_row.allowed_origins = ["https://shop.example.org"]
        db.session.commit()
    with configured(app, SIGNUP_RATE_PER_IP="3/minute"):
        limited = signup(client, app, form, {"email": "cors-limited@example.org"},
                         headers={"Origin": "https://shop.example.org"})
    assert limited.status_code == 429  # an allowed page can read the 429
    assert limited.headers["Access-Control-Allow-Origin"] == "https://shop.example.org"
    with app.app_context():
        assert _count() == 4


def test_one_confirmation_per_address_per_window(app, client, make_form, smtp_server, worker):
    form = make_form()
    answers = [signup(client, app, form, {"email": "Same@example.org"}).get_json() for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]
    drain(worker)
    assert len(smtp_server.messages) == 1


def test_cors_for_allowed_origins_only(app, client, make_form):
    form = make_form(allowed_origins=["https://shop.example.org"])
    ok = client.get("/forms/news", headers={"Accept": "application/json", "Origin": "https://shop.example.org"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example.org"
    assert "Origin" in ok.headers["Vary"]
    other = client.get("/forms/news", headers={"Accept": "application/json", "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = client.options("/forms/news", headers={"Origin": "https://shop.example.org",
                                                 "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://shop.example.org"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert client.options("/forms/news", headers={"Origin": "https://evil.example"}).status_code == 403
    # multipart FormData from the allowed page, no cookie, no CSRF
    fresh = client.__class__(app)
    resp = fresh.post("/forms/news", data={"_token": old_token(app, form["id"]), "email": "cors@example.org"},
                      content_type="multipart/form-data",
                      headers={"Origin": "https://shop.example.org", "Accept": "application/json"})
    assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.org"
    refused = fresh.post("/forms/news", data={"_token": old_token(app, form["id"]), "email": "evil@example.org"},
                         headers={"Origin": "https://evil.example", "Accept": "application/json"})
    assert refused.status_code == 403
    with app.app_context():
        assert db.session.scalars(sa.select(Contact.email)).all() == ["cors@example.org"]


def _serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def test_fifty_concurrent_signups_of_one_address(app, make_form, smtp_server, worker):
    form = make_form()
    token = old_token(app, form["id"])
    server, base = _serve(app)

    def post(i):
        return requests.post(f"{base}/forms/news", json={"_token": token, "email": "Rush@Example.org",
                                                          "first_name": f"N{i}"},
                             headers={"Accept": "application/json"}, timeout=60)

    try:
        with configured(app, SIGNUP_RATE_PER_IP="1000/minute"):
            with ThreadPoolExecutor(max_workers=25) as pool:
                responses = list(pool.map(post, range(50)))
            # Without the per-address limit, the upserts themselves still converge on one contact.
            with configured(app, SIGNUP_RATE_PER_ADDRESS="1000/minute"):
                with ThreadPoolExecutor(max_workers=25) as pool:
                    again = list(pool.map(post, range(50)))
    finally:
        server.shutdown()
    assert {r.status_code for r in responses + again} == {200}, [r.text for r in responses if r.status_code != 200][:2]
    assert len({r.text for r in responses}) == 1
    drain(worker)
    with app.app_context():
        assert db.session.scalars(sa.select(Contact.email)).all() == ["rush@example.org"]
    assert len(smtp_server.messages) >= 1


def test_fifty_concurrent_signups_send_at_most_one_email(app, make_form, smtp_server, worker):
    form = make_form()
    token = old_token(app, form["id"])
    server, base = _serve(app)
    try:
        with configured(app, SIGNUP_RATE_PER_IP="1000/minute"):
            with ThreadPoolExecutor(max_workers=25) as pool:
                responses = list(pool.map(lambda i: requests.post(
                    f"{base}/forms/news", json={"_token": token, "email": "one@example.org"},
                    headers={"Accept": "application/json"}, timeout=60), range(50)))
    finally:
        server.shutdown()
    assert {r.status_code for r in responses} == {200}
    drain(worker)
    with app.app_context():
        assert _count() == 1
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)) == 1
    assert len(smtp_server.messages) == 1


def test_new_signup_is_one_statement_on_postgresql_and_stored_pending(app, client, make_form):
    """A new address on a double opt-in form, the form already cached: the contact (already
    pending), the consent request and the signup action in one INSERT ... CTE on PostgreSQL, three
    INSERTs on SQLite; no form read, no lookup, no UPDATE after the INSERT, no attribute types."""
    form = make_form()
    assert signup(client, app, form, {"email": "first@example.org"}).status_code == 200  # caches the form
    with app.app_context():
        engine = db.engine
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement.split(None, 1)[0].upper())

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        resp = signup(client, app, form, {"email": "budget@example.org", "first_name": "Ada"})
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert statements == (["WITH"] if engine.dialect.name == "postgresql" else ["INSERT"] * 3), statements
    with app.app_context():
        contact = db.session.scalar(sa.select(Contact).where(Contact.email == "budget@example.org"))
        assert (contact.email, contact.email_status, contact.lifecycle) == ("budget@example.org", "pending", "prospect")
        assert contact.email_status_at is not None and contact.updated_at == contact.created_at
        assert (contact.tags, contact.attributes, contact.first_name) == ([], {}, None)  # values wait for the confirmation
        event = db.session.scalar(sa.select(ConsentEvent).where(ConsentEvent.contact_id == contact.id))
        assert (event.kind, event.channel, event.method, event.source) == ("requested", "email", "form", "form:news")
        assert event.data["values"] == {"email": "budget@example.org", "first_name": "Ada"}
        assert event.data["form_id"] == form["id"] and event.text == "I agree to receive the newsletter."
        action = db.session.scalar(sa.select(Action).where(Action.contact_id == contact.id))
        assert (action.kind, action.data) == ("signup", {"form": "news", "channels": ["email"], "created": True,
                                                         "double_opt_in": True})
        assert db.session.scalar(sa.select(ConsentEvent.kind)) == "requested"
