"""Login, logout, CSRF, rate-limited attempts, roles, no open redirect, language, users and tokens."""
from __future__ import annotations

import pytest

from tests.admin.conftest import PASSWORD, Staff, csrf_of, make_staff


def _login(client, email, password, **extra):
    token = csrf_of(client.get("/admin/login").get_data(as_text=True))
    return client.post("/admin/login", data={"email": email, "password": password, "_csrf": token, **extra})


def test_pages_need_a_session_and_login_returns_to_the_page_asked(app, client):
    from envoi.auth.services import create_user

    with app.app_context():
        create_user("m@example.org", "marketer", PASSWORD)
    resp = client.get("/admin/contacts?city=Lyon")
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/admin/login?next=")
    assert client.post("/admin/contacts/import").status_code == 401
    resp = _login(client, "m@example.org", PASSWORD, next="/admin/contacts?city=Lyon")
    assert resp.status_code == 303 and resp.headers["Location"] == "/admin/contacts?city=Lyon"
    assert client.get("/admin/contacts").status_code == 200


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(app, client):
    from envoi.auth.services import create_user

    with app.app_context():
        create_user("m@example.org", "marketer", PASSWORD)
    for email in ("m@example.org", "nobody@example.org"):
        resp = _login(client, email, "wrong password!")
        assert resp.status_code == 401
        assert "Wrong email or password." in resp.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_deactivated_user_cannot_log_in_and_loses_the_session(app, admin):
    staff = make_staff(app, "marketer")
    assert staff.get("/admin/").status_code == 200
    users = admin.get("/admin/users").get_data(as_text=True)
    assert "marketer@example.org" in users
    from envoi.auth.models import User
    from envoi.extensions import db

    with app.app_context():
        uid = db.session.scalar(db.select(User.id).where(User.email == "marketer@example.org"))
    assert admin.post("/admin/users", {"action": "deactivate", "user_id": uid}).status_code == 303
    assert staff.get("/admin/").status_code == 302  # the session no longer opens pages
    assert _login(app.test_client(), "marketer@example.org", PASSWORD).status_code == 401


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/admin", "/\\evil.example",
                                    "http://localhost/admin", "/forms/x", "javascript:alert(1)"])
def test_next_never_leaves_the_admin(app, client, target):
    from envoi.auth.services import create_user

    with app.app_context():
        create_user("m@example.org", "marketer", PASSWORD)
    resp = _login(client, "m@example.org", PASSWORD, next=target)
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/admin/"


def test_login_without_csrf_token_is_refused(app, client):
    from envoi.auth.services import create_user

    with app.app_context():
        create_user("m@example.org", "marketer", PASSWORD)
    client.get("/admin/login")
    resp = client.post("/admin/login", data={"email": "m@example.org", "password": PASSWORD})
    assert resp.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_every_post_needs_the_session_csrf_token(marketer):
    for path in ("/admin/segments/new", "/admin/forms/new", "/admin/campaigns/new", "/admin/logout"):
        resp = marketer.client.post(path, data={"name": "x"})
        assert resp.status_code == 400, path
        resp = marketer.client.post(path, data={"name": "x", "_csrf": "forged"})
        assert resp.status_code == 400, path
    resp = marketer.client.post("/admin/segments/preview", json={"rules": {"all": []}})
    assert resp.status_code == 400
    assert marketer.post_json("/admin/segments/preview", {"rules": {"all": []}}).status_code == 200


def test_failed_logins_are_rate_limited_successful_ones_are_not(app, client):
    from envoi.auth.services import create_user

    app.config["ADMIN_LOGIN_RATE"] = "3 per minute"
    try:
        with app.app_context():
            create_user("m@example.org", "marketer", PASSWORD)
        for _ in range(3):
            assert _login(app.test_client(), "m@example.org", PASSWORD).status_code == 303  # not counted
        for _ in range(3):
            assert _login(client, "m@example.org", "nope nope nope").status_code == 401
        blocked = _login(client, "m@example.org", PASSWORD)
        assert blocked.status_code == 429  # even the right password waits now
    finally:
        app.config["ADMIN_LOGIN_RATE"] = "10 per minute"


def test_logout_ends_the_session(marketer):
    assert marketer.get("/admin/").status_code == 200
    resp = marketer.post("/admin/logout")
    assert resp.status_code == 303 and resp.headers["Location"] == "/admin/login"
    assert marketer.get("/admin/").status_code == 302


def test_session_changes_at_login(app, client):
    """No session fixation: the CSRF token of the anonymous session does not survive the login."""
    from envoi.auth.services import create_user

    with app.app_context():
        create_user("m@example.org", "marketer", PASSWORD)
    before = csrf_of(client.get("/admin/login").get_data(as_text=True))
    _login(client, "m@example.org", PASSWORD)
    after = csrf_of(client.get("/admin/").get_data(as_text=True))
    assert before != after


def test_viewer_reads_but_cannot_write(app, viewer):
    assert viewer.get("/admin/contacts").status_code == 200
    assert viewer.get("/admin/campaigns").status_code == 200
    assert viewer.get("/admin/segments/new").status_code == 200
    assert viewer.post("/admin/segments/new", {"name": "x", "rules": '{"all": []}'}).status_code == 403
    assert viewer.post("/admin/campaigns/new", {"name": "x", "channel": "email"}).status_code == 403
    assert viewer.get("/admin/outbox").status_code == 403  # messages carry personal links
    assert viewer.get("/admin/contacts/export.csv").status_code == 403
    assert viewer.get("/admin/users").status_code == 403
    # Reading helpers stay open to viewers.
    assert viewer.post_json("/admin/segments/preview", {"rules": {"all": []}}).status_code == 200


def test_marketer_cannot_manage_users_or_tokens(marketer):
    assert marketer.get("/admin/users").status_code == 403
    assert marketer.get("/admin/tokens").status_code == 403
    assert marketer.post("/admin/users", {"email": "x@example.org", "role": "admin"}).status_code == 403
    page = marketer.get("/admin/").get_data(as_text=True)
    assert "/admin/users" not in page and "/admin/outbox" in page


def test_admin_creates_a_user_who_can_log_in_and_a_token_shown_once(app, admin, client):
    resp = admin.post("/admin/users", {"action": "create", "email": "new@example.org", "role": "viewer",
                                       "password": "a long password"})
    assert resp.status_code == 303
    assert _login(client, "new@example.org", "a long password").status_code == 303
    resp = admin.post("/admin/users", {"action": "create", "email": "new@example.org", "role": "viewer"},
                      follow_redirects=True)
    assert "already a user" in resp.get_data(as_text=True)

    page = admin.post("/admin/tokens", {"action": "create", "email": "new@example.org", "name": "ci"})
    html = page.get_data(as_text=True)
    import re

    token = re.search(r'id="new-token">(envoi_[^<]+)<', html).group(1)
    assert app.test_client().get("/api/v1/contacts", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert token not in admin.get("/admin/tokens").get_data(as_text=True)  # shown once
    from envoi.auth.models import ApiToken
    from envoi.extensions import db

    with app.app_context():
        token_id = db.session.scalar(db.select(ApiToken.id).where(ApiToken.name == "ci"))
    admin.post("/admin/tokens", {"action": "revoke", "token_id": token_id})
    assert app.test_client().get("/api/v1/contacts", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_the_last_admin_cannot_deactivate_themselves(app, admin):
    from envoi.auth.models import User
    from envoi.extensions import db

    with app.app_context():
        uid = db.session.scalar(db.select(User.id).where(User.email == "admin@example.org"))
    page = admin.post("/admin/users", {"action": "deactivate", "user_id": uid}, follow_redirects=True)
    assert "keep one admin" in page.get_data(as_text=True)
    assert admin.get("/admin/").status_code == 200


def test_language_follows_the_browser_then_the_user_setting(app, marketer):
    page = marketer.get("/admin/", headers={"Accept-Language": "fr-FR,fr;q=0.9"}).get_data(as_text=True)
    assert "Tableau de bord" in page and 'lang="fr"' in page
    page = marketer.get("/admin/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Dashboard" in page
    marketer.post("/admin/lang", {"lang": "fr", "next": "/admin/contacts"})
    # Kept as the user's setting: a new session in an English browser gets French.
    other = Staff(app.test_client(), "marketer@example.org")
    page = other.get("/admin/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Tableau de bord" in page


def test_static_assets_are_served_from_the_repo(client):
    assert client.get("/admin/static/admin.css").status_code == 200
    js = client.get("/admin/static/admin.js")
    assert js.status_code == 200 and b"builder" in js.data
    page = client.get("/admin/login").get_data(as_text=True)
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
