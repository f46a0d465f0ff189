"""The signup's per-process form cache (an edit takes effect at once) and its one-round-trip rate
limits on the real Redis (per IP: 429 with Retry-After; per address: no second message)."""
from __future__ import annotations

import sqlalchemy as sa

from contacts.models import ConsentEvent, Contact
from envoi.extensions import db
from optin import ratelimit, services
from optin.models import Form
from tests.conftest import configured
from tests.optin.conftest import signup


def _requested(app) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)
                                 .where(ConsentEvent.kind == "requested"))


def _cached(app, slug: str):
    with app.app_context():
        return app.extensions.get("envoi_form_cache", {}).get(slug)


def test_a_form_edit_through_the_service_takes_effect_at_once(app, client, make_form):
    form = make_form(fields=["email", "first_name"])
    assert signup(client, app, form, {"email": "a@example.org", "first_name": "Ada"}).status_code == 200
    assert _cached(app, "news") is not None
    with app.app_context():
        services.update_form(form["id"], {"fields": ["email"]})
    refused = signup(client, app, form, {"email": "b@example.org", "first_name": "Bob"})
    assert refused.status_code == 422
    assert refused.get_json()["fields"] == {"first_name": "not collected by this form"}
    with app.app_context():
        services.update_form(form["id"], {"consent_text": "New text", "consent_version": "v2"})
    assert signup(client, app, form, {"email": "c@example.org"}).status_code == 200
    with app.app_context():
        event = db.session.scalar(sa.select(ConsentEvent).order_by(ConsentEvent.id.desc()).limit(1))
        assert (event.text, event.data["consent_version"]) == ("New text", "v2")
        services.delete_form(form["id"])
    assert signup(client, app, form, {"email": "d@example.org"}).status_code == 404


def test_an_orm_edit_made_anywhere_takes_effect_at_once(app, client, make_form):
    form = make_form()
    assert signup(client, app, form, {"email": "a@example.org"}).status_code == 200
    with app.app_context():
        row = db.session.get(Form, form["id"])
        row.allowed_origins = ["https://shop.example.org"]
        db.session.commit()
    ok = signup(client, app, form, {"email": "b@example.org"}, headers={"Origin": "https://shop.example.org"})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "https://shop.example.org"


def test_an_edit_by_another_process_takes_effect_at_once(app, client, make_form):
    """Another process commits the edit and bumps the forms' version: this one's cached copy is stale
    and the signup is redone on the form as it is now, with its rate-limit counts taken once."""
    form = make_form(fields=["email", "first_name"])
    assert signup(client, app, form, {"email": "a@example.org"}).status_code == 200
    with app.app_context():
        db.session.execute(sa.update(Form).where(Form.id == form["id"]).values(double_opt_in=False))
        db.session.commit()  # plain SQL: no ORM event here, as in another process ...
        ratelimit.bump_forms_version()  # ... whose commit bumped the version
    with configured(app, SIGNUP_RATE_PER_IP="2/minute"):
        resp = signup(client, app, form, {"email": "b@example.org", "first_name": "Bea"})
        assert resp.status_code == 200
        # one count for the redone signup: the second POST is still allowed, the third is not
        assert signup(client, app, form, {"email": "c@example.org"}).status_code == 200
        assert signup(client, app, form, {"email": "d@example.org"}).status_code == 429
    with app.app_context():
        bea = db.session.scalar(sa.select(Contact).where(Contact.email == "b@example.org"))
        assert (bea.email_status, bea.first_name) == ("confirmed", "Bea")  # single opt-in now


def test_the_n_plus_first_post_per_ip_is_refused_with_retry_after(app, client, make_form):
    form = make_form()
    with configured(app, SIGNUP_RATE_PER_IP="4/minute;100/hour"):
        codes = [signup(client, app, form, {"email": f"ip{i}@example.org"}).status_code for i in range(4)]
        bot = signup(client, app, form, {"email": "bot@example.org", "website": "spam"})  # counts too
        html = signup(client, app, form, {"email": "page@example.org"}, json=False,
                      headers={"Origin": "http://localhost"})
        elsewhere = signup(client, app, form, {"email": "far@example.org"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert codes == [200, 200, 200, 200]
    assert bot.status_code == 429 and 1 <= int(bot.headers["Retry-After"]) <= 60
    assert bot.get_json() == {"error": "too many signups from this address; try again later", "fields": {}}
    assert html.status_code == 429 and "Retry-After" in html.headers and b"<html" in html.data
    assert elsewhere.status_code == 200
    assert _requested(app) == 5


def test_the_n_plus_first_signup_per_address_gets_no_message(app, client, make_form):
    form = make_form()
    with configured(app, SIGNUP_RATE_PER_ADDRESS="2/minute"):
        answers = [signup(client, app, form, {"email": "Same@Example.org"},
                          environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).get_json() for i in range(3)]
        other = signup(client, app, form, {"email": "other@example.org"})
    assert answers[0] == answers[1] == answers[2] and answers[0]["status"] == "ok"  # nothing tells them apart
    assert other.status_code == 200
    with app.app_context():
        # two requests (two confirmation messages) for the address, the third throttled; the other address is free
        assert _requested(app) == 3
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 2


def test_limits_live_in_redis_under_the_limiter_prefix(app, client, make_form):
    """`limiter.reset()` (tests, operators) clears the signup windows too."""
    from envoi.extensions import limiter

    form = make_form()
    with configured(app, SIGNUP_RATE_PER_IP="1/minute"):
        assert signup(client, app, form, {"email": "a@example.org"}).status_code == 200
        assert signup(client, app, form, {"email": "b@example.org"}).status_code == 429
        with app.app_context():
            keys = ratelimit.client().keys("LIMITS:optin:*")
            assert keys and all(k.startswith(b"LIMITS:optin:") for k in keys)
            limiter.reset()
        assert signup(client, app, form, {"email": "b@example.org"}).status_code == 200


def test_a_refusal_on_a_stale_copy_is_redone_on_the_edited_form(app, client, make_form):
    """The version comes back with the IP count even when nothing is stored: a page newly allowed
    by another process's edit is not refused on the old copy (and the POST counts once)."""
    form = make_form()
    assert signup(client, app, form, {"email": "a@example.org"}).status_code == 200
    site = {"Origin": "https://new-shop.example.org"}
    assert signup(client, app, form, {"email": "b@example.org"}, headers=site).status_code == 403
    with app.app_context():
        db.session.execute(sa.update(Form).where(Form.id == form["id"])
                           .values(allowed_origins=["https://new-shop.example.org"]))
        db.session.commit()
        ratelimit.bump_forms_version()
    with configured(app, SIGNUP_RATE_PER_IP="1/minute"):
        resp = signup(client, app, form, {"email": "c@example.org"}, headers=site)
        assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == site["Origin"]
        assert signup(client, app, form, {"email": "d@example.org"}, headers=site).status_code == 429
