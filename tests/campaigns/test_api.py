"""/api/v1/campaigns: validation, roles, editing rules, preview, test sends, send/cancel/stats."""
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from campaigns.models import Campaign, Delivery
from contacts.models import Contact
from envoi.extensions import db

URL = "/api/v1/campaigns"


@pytest.fixture
def audience(app):
    from contacts.services import create_topic
    from segments.services import create_segment

    with app.app_context():
        segment = create_segment("Lyon", {"field": "city", "op": "eq", "value": "Lyon"})
        create_topic("news", "News")
        contact = Contact(email="marie@example.org", phone="+33612345678", first_name="Marie", city="Lyon",
                          language="fr", birth_date=date(1990, 3, 12), email_status="confirmed",
                          sms_status="confirmed", tags=[], attributes={})
        db.session.add(contact)
        db.session.commit()
        return {"segment_id": segment.id, "contact_id": contact.id}


def email_campaign(audience, **values):
    data = {"name": "Spring", "channel": "email", "segment_id": audience["segment_id"],
            "subject": "Bonjour {{ contact.first_name | default('client') }}",
            "html": "<p>Né le {{ contact.birth_date | date }}</p>"}
    data.update(values)
    return data


def test_create_read_list_update_delete(marketer_api, viewer_api, audience):
    ids = []
    for n in range(3):
        resp = marketer_api.post(URL, json=email_campaign(audience, name=f"c{n}", topic="news"))
        assert resp.status_code == 201, resp.json
        ids.append(resp.json["id"])
    body = resp.json
    assert body["status"] == "draft" and body["topic"] == "news" and body["segment_id"] == audience["segment_id"]
    assert viewer_api.get(f"{URL}/{ids[0]}").json["name"] == "c0"
    page = viewer_api.get(f"{URL}?limit=2").json
    assert [c["id"] for c in page["items"]] == ids[::-1][:2] and page["next"]
    rest = viewer_api.get(f"{URL}?limit=2&cursor={page['next']}").json
    assert [c["id"] for c in rest["items"]] == [ids[0]] and rest["next"] is None
    resp = marketer_api.patch(f"{URL}/{ids[0]}", json={"subject": "Nouveau", "topic": None})
    assert resp.status_code == 200 and resp.json["subject"] == "Nouveau" and resp.json["topic"] is None
    assert marketer_api.delete(f"{URL}/{ids[0]}").status_code == 204
    assert viewer_api.get(f"{URL}/{ids[0]}").status_code == 404


def test_roles(viewer_api, marketer_api, audience):
    assert viewer_api.post(URL, json=email_campaign(audience)).status_code == 403
    cid = marketer_api.post(URL, json=email_campaign(audience)).json["id"]
    for path in ("send", "pause", "resume", "cancel", "test"):
        assert viewer_api.post(f"{URL}/{cid}/{path}", json={"to": ["a@example.org"]}).status_code == 403
    assert viewer_api.patch(f"{URL}/{cid}", json={"name": "x"}).status_code == 403
    assert viewer_api.delete(f"{URL}/{cid}").status_code == 403
    assert viewer_api.post(f"{URL}/{cid}/preview", json={}).status_code == 200


@pytest.mark.parametrize("change, fields", [
    ({"channel": "fax"}, {"channel"}),
    ({"segment_id": None}, {"audience"}),
    ({"segment_id": 999999}, {"segment_id"}),
    ({"topic": "nope"}, {"topic"}),
    ({"exclude_segment_ids": [999999]}, {"exclude_segment_ids"}),
    ({"subject": ""}, {"subject"}),
    ({"html": None}, {"html"}),
    ({"sender": "not an address"}, {"sender"}),
    ({"name": ""}, {"name"}),
    ({"bogus": 1}, {"bogus"}),
])
def test_validation(marketer_api, audience, change, fields):
    resp = marketer_api.post(URL, json=email_campaign(audience, **change))
    assert resp.status_code == 422, resp.json
    assert set(resp.json["fields"]) >= fields


def test_template_errors_name_field_and_line(marketer_api, audience):
    resp = marketer_api.post(URL, json=email_campaign(
        audience, subject="{{ contact.first_name", html="<p>a</p>\n<p>{{ contact.__class__.__mro__ }}</p>"))
    assert resp.status_code == 422
    assert resp.json["fields"]["subject"].startswith("line 1: ")
    assert resp.json["fields"]["html"].startswith("line 2: ") and "not allowed" in resp.json["fields"]["html"]


def test_sms_requires_a_body_and_reports_segments(marketer_api, audience):
    base = {"name": "sms", "channel": "sms", "topic": "news"}
    assert set(marketer_api.post(URL, json=base).json["fields"]) == {"body"}
    resp = marketer_api.post(URL, json={**base, "body": "Soldes {{ contact.first_name }} 😀"})
    assert resp.status_code == 201
    assert resp.json["sms"]["encoding"] == "UCS-2" and resp.json["sms"]["segments"] == 1


def test_only_draft_scheduled_or_paused_campaigns_are_editable(app, marketer_api, audience):
    cid = marketer_api.post(URL, json=email_campaign(audience)).json["id"]
    for status, editable in (("scheduled", True), ("paused", True), ("sending", False), ("sent", False),
                             ("cancelled", False)):
        with app.app_context():
            db.session.execute(sa.update(Campaign).where(Campaign.id == cid).values(status=status))
            db.session.commit()
        resp = marketer_api.patch(f"{URL}/{cid}", json={"name": f"n-{status}"})
        assert resp.status_code == (200 if editable else 409), (status, resp.json)
        assert marketer_api.delete(f"{URL}/{cid}").status_code == 409


def test_preview_as_a_contact(viewer_api, marketer_api, audience):
    cid = marketer_api.post(URL, json=email_campaign(audience)).json["id"]
    resp = viewer_api.post(f"{URL}/{cid}/preview", json={"contact_id": audience["contact_id"]})
    assert resp.status_code == 200
    assert resp.json["subject"] == "Bonjour Marie"
    assert "Né le 12 mars 1990" in resp.json["html"] and "Né le 12 mars 1990" in resp.json["text"]
    assert viewer_api.post(f"{URL}/{cid}/preview", json={}).json["subject"] == "Bonjour client"
    assert viewer_api.post(f"{URL}/{cid}/preview", json={"contact_id": 999999}).status_code == 422
    sms = marketer_api.post(URL, json={"name": "s", "channel": "sms", "topic": "news",
                                       "body": "Coucou {{ contact.first_name }}"}).json["id"]
    resp = viewer_api.post(f"{URL}/{sms}/preview", json={"contact_id": audience["contact_id"]})
    assert resp.json["body"].startswith("Coucou Marie\n") and resp.json["sms"]["encoding"] == "GSM-7"


def test_test_send_email_reaches_smtp_and_logs_no_delivery(app, marketer_api, audience, smtp_server):
    cid = marketer_api.post(URL, json=email_campaign(audience)).json["id"]
    bad = marketer_api.post(f"{URL}/{cid}/test", json={"to": ["ok@example.org", "nope"]})
    assert bad.status_code == 422 and "to[1]" in bad.json["fields"]
    resp = marketer_api.post(f"{URL}/{cid}/test", json={"to": ["Boss@Example.org"],
                                                        "contact_id": audience["contact_id"]})
    assert resp.status_code == 200 and resp.json["results"][0]["sent"] is True
    received = smtp_server.wait_for(1)[0]
    assert received["to"] == ["boss@example.org"]
    assert received["message"]["Subject"] == "[TEST] Bonjour Marie"
    assert received["message"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Delivery)) == 0


def test_test_send_sms_reaches_twilio(app, marketer_api, audience, fake_twilio):
    cid = marketer_api.post(URL, json={"name": "s", "channel": "sms", "topic": "news",
                                       "body": "Soldes {{ contact.first_name | default('à tous') }}"}).json["id"]
    resp = marketer_api.post(f"{URL}/{cid}/test", json={"to": ["06 12 34 56 78"]})
    assert resp.status_code == 200, resp.json
    (message,) = fake_twilio.messages
    assert message["To"] == "+33612345678"
    assert message["Body"].startswith("[TEST] Soldes à tous\n") and "STOP" in message["Body"]


def test_send_later_then_cancel_and_stats(marketer_api, viewer_api, audience):
    cid = marketer_api.post(URL, json=email_campaign(audience)).json["id"]
    assert marketer_api.post(f"{URL}/{cid}/send", json={"at": "tomorrow"}).status_code == 422
    at = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    resp = marketer_api.post(f"{URL}/{cid}/send", json={"at": at.isoformat()})
    assert resp.status_code == 200, resp.json
    assert resp.json["status"] == "scheduled" and resp.json["send_at"].startswith(at.isoformat()[:19])
    assert marketer_api.post(f"{URL}/{cid}/cancel", json={}).json["status"] == "cancelled"
    assert marketer_api.patch(f"{URL}/{cid}", json={"name": "late"}).status_code == 409
    stats = viewer_api.get(f"{URL}/{cid}/stats")
    assert stats.status_code == 200 and stats.json["targeted"] == 0
    assert viewer_api.get(f"{URL}/999999/stats").status_code == 404
