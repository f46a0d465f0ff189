"""The settings page: topics and custom attributes through the API's services, the running
configuration read-only with secrets masked; admins only."""
from __future__ import annotations


def test_admin_creates_edits_and_deletes_topics_and_declares_attributes(app, admin):
    resp = admin.post("/admin/settings/topics", {"slug": "offers", "name": "Offers", "description": "Deals"})
    assert resp.status_code == 303
    resp = admin.post("/admin/settings/attributes", {"key": "loyalty_level", "type": "number", "label": "Level"})
    assert resp.status_code == 303
    page = admin.get("/admin/settings").get_data(as_text=True)
    assert "offers" in page and "Deals" in page and "loyalty_level" in page and "Level" in page
    from contacts.models import AttributeDefinition, Topic
    from envoi.extensions import db

    with app.app_context():
        topic = db.session.query(Topic).filter_by(slug="offers").one()
        assert db.session.query(AttributeDefinition).filter_by(key="loyalty_level").one().type == "number"
        topic_id = topic.id
    admin.post(f"/admin/settings/topics/{topic_id}", {"action": "save", "name": "Special offers",
                                                      "description": ""})
    with app.app_context():
        assert db.session.get(Topic, topic_id).name == "Special offers"
    # What the API says (the same services): the new attribute may be used by segments at once.
    seg = admin.post_json("/admin/segments/preview", {"rules": {"field": "attributes.loyalty_level", "op": "gt",
                                                                 "value": 2}})
    assert seg.status_code == 200 and seg.get_json()["count"] == 0
    admin.post(f"/admin/settings/topics/{topic_id}", {"action": "delete"})
    with app.app_context():
        assert db.session.get(Topic, topic_id) is None


def test_bad_input_is_refused_with_the_field_and_reason(app, admin):
    admin.post("/admin/settings/topics", {"slug": "news", "name": "News"})
    for path, data, reason in (
            ("/admin/settings/topics", {"slug": "Bad Slug", "name": "x"}, "slug: lower-case letters"),
            ("/admin/settings/topics", {"slug": "news", "name": "Again"}, "slug: already used"),
            ("/admin/settings/topics", {"slug": "other", "name": " "}, "name: required"),
            ("/admin/settings/attributes", {"key": "9x", "type": "string"}, "key: lower-case letters"),
            ("/admin/settings/attributes", {"key": "size", "type": "colour"}, "type: one of")):
        resp = admin.post(path, data, follow_redirects=True)
        assert resp.status_code == 200 and reason in resp.get_data(as_text=True), (data, reason)
    assert admin.post("/admin/settings/topics/999999", {"action": "save", "name": "x"}).status_code == 404


def test_running_configuration_masks_secrets(app, admin, monkeypatch):
    monkeypatch.setitem(app.config, "SMTP_URL", "smtp://mailer:hunter2-secret@127.0.0.1:2525")
    monkeypatch.setitem(app.config, "TWILIO_AUTH_TOKEN", "twilio-token-value")
    page = admin.get("/admin/settings").get_data(as_text=True)
    assert "smtp://mailer:****@127.0.0.1:2525" in page and "hunter2-secret" not in page
    assert "twilio-token-value" not in page and app.config["SECRET_KEY"] not in page
    assert "DEFAULT_REGION" in page and "TWILIO_AUTH_TOKEN" in page
    from envoi.admin.settings import masked

    assert masked("SQLALCHEMY_ENGINE_OPTIONS", {"url": "postgresql://u:pw@h/db"}) == "{'url': 'postgresql://u:****@h/db'}"
    assert masked("DKIM_KEY_PATH", "/etc/dkim.pem") == "/etc/dkim.pem" and masked("SECRET_KEY", None) == "—"


def test_viewers_and_marketers_cannot_read_or_change_settings(app, viewer, marketer):
    for staff in (viewer, marketer):
        assert staff.get("/admin/settings").status_code == 403
        assert staff.post("/admin/settings/topics", {"slug": "x", "name": "X"}).status_code == 403
        assert staff.post("/admin/settings/attributes", {"key": "x", "type": "string"}).status_code == 403
        assert "/admin/settings" not in staff.get("/admin/").get_data(as_text=True)
    from contacts.models import Topic
    from envoi.extensions import db

    with app.app_context():
        assert db.session.query(Topic).count() == 0
