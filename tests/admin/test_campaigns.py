"""Campaigns in the admin: create and edit (422 naming the field), SMS counter, preview as a
contact, test send to the dev outbox, send now through the worker, progress and stats with the
SVG chart, pause/resume/cancel, schedule."""
from __future__ import annotations

import json
import re


from tests.campaigns.dispatch_fixtures import (_clean_campaign_keys, make_contacts, quiet_off,  # noqa: F401
                                               run_worker, stub_broker)


def _segment(marketer, rules=None, name="Lyon") -> int:
    resp = marketer.post("/admin/segments/new", {"name": name, "rules": json.dumps(
        rules or {"field": "city", "op": "eq", "value": "Lyon"})})
    assert resp.status_code == 303, resp.get_data(as_text=True)
    return int(resp.headers["Location"].rsplit("/", 1)[1])


def _email_campaign(marketer, segment_id, **extra) -> int:
    data = {"name": "Soldes", "channel": "email", "segment_id": segment_id, "topic": "",
            "subject": "Bonjour {{ contact.first_name }}", "sender": "",
            "html": "<p>Bonjour {{ contact.first_name|default('client') }}</p>", "text": "", **extra}
    resp = marketer.post("/admin/campaigns/new", data)
    assert resp.status_code == 303, resp.get_data(as_text=True)
    return int(resp.headers["Location"].rsplit("/", 1)[1])


def test_create_refuses_bad_content_naming_the_field(app, marketer):
    resp = marketer.post("/admin/campaigns/new", {"name": "", "channel": "email", "subject": "",
                                                  "html": "{{ broken", "text": ""})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422
    for field in ("name", "subject", "html", "audience"):
        assert field in html
    assert "{{ broken" in html  # what was typed is kept


def test_edit_preview_as_contact_and_test_send_to_the_outbox(app, marketer):
    with app.app_context():
        ids = make_contacts(2)
    segment_id = _segment(marketer)
    cid = _email_campaign(marketer, segment_id)
    resp = marketer.post(f"/admin/campaigns/{cid}", {"subject": "Hello {{ contact.first_name }}", "name": "Soldes"})
    assert resp.status_code == 303
    page = marketer.get(f"/admin/campaigns/{cid}").get_data(as_text=True)
    assert "Hello {{ contact.first_name }}" in page
    preview = marketer.get(f"/admin/campaigns/{cid}/preview?contact_id={ids[0]}")
    assert preview.status_code == 200 and "Bonjour Ada0" in preview.get_data(as_text=True)
    assert "sandbox" in preview.headers["Content-Security-Policy"]
    generic = marketer.get(f"/admin/campaigns/{cid}/preview").get_data(as_text=True)
    assert "Bonjour client" in generic
    assert marketer.get(f"/admin/campaigns/{cid}/preview?contact_id=999999").status_code == 422
    resp = marketer.post(f"/admin/campaigns/{cid}/test", {"to": "me@example.org", "contact_id": ids[1]},
                         follow_redirects=True)
    assert "me@example.org" in resp.get_data(as_text=True)
    outbox = marketer.get("/admin/outbox").get_data(as_text=True)
    assert "[TEST] Hello Ada1" in outbox
    bad = marketer.post(f"/admin/campaigns/{cid}", {"html": "{% for %}"})
    assert bad.status_code == 422 and "html" in bad.get_data(as_text=True)


def test_sms_campaign_shows_its_segment_counter(app, marketer):
    segment_id = _segment(marketer)
    resp = marketer.post("/admin/campaigns/new", {"name": "Flash", "channel": "sms", "segment_id": segment_id,
                                                  "topic": "", "body": "Hi " * 60})
    cid = int(resp.headers["Location"].rsplit("/", 1)[1])
    page = marketer.get(f"/admin/campaigns/{cid}").get_data(as_text=True)
    assert re.search(r"GSM-7 · [2-9] segments", page)
    live = marketer.post_json("/admin/campaigns/sms-info", {"body": "Café ☕"})
    assert live.get_json()["encoding"] == "UCS-2" and live.get_json()["segments"] == 1
    assert marketer.post_json("/admin/campaigns/sms-info", {"body": 5}).status_code == 422


def test_send_now_runs_in_the_worker_and_the_page_shows_stats_and_chart(app, marketer, run_worker, quiet_off):
    with app.app_context():
        ids = make_contacts(3)
    cid = _email_campaign(marketer, _segment(marketer))
    resp = marketer.post(f"/admin/campaigns/{cid}/send", {})
    assert resp.status_code == 303
    page = marketer.get(f"/admin/campaigns/{cid}").get_data(as_text=True)
    assert 'data-refresh' in page and 'data-status="sending"' in page
    run_worker()
    page = marketer.get(f"/admin/campaigns/{cid}").get_data(as_text=True)
    assert 'data-status="sent"' in page and 'data-refresh' not in page
    assert re.search(r'id="stat-sent">3<', page)
    assert "<svg" in page and "Sent over time" in page
    # The contact's timeline shows the mailing.
    contact = marketer.get(f"/admin/contacts/{ids[0]}").get_data(as_text=True)
    assert "mailing" in contact and "Soldes" in contact
    # The dashboard lists it among the last campaigns, with its numbers.
    dash = marketer.get("/admin/").get_data(as_text=True)
    assert "Soldes" in dash[dash.index("Last campaigns"):]
    # A sent campaign cannot be sent again or edited.
    again = marketer.post(f"/admin/campaigns/{cid}/send", {}, follow_redirects=True)
    assert "cannot be sent" in again.get_data(as_text=True)
    assert marketer.post(f"/admin/campaigns/{cid}", {"name": "x"}).status_code == 409


def test_schedule_pause_resume_cancel(app, marketer, stub_broker):
    with app.app_context():
        make_contacts(2)
    cid = _email_campaign(marketer, _segment(marketer))
    marketer.post(f"/admin/campaigns/{cid}/send", {"at": "2099-01-01T10:00", "tz_offset": "-60"})
    from campaigns.models import Campaign
    from envoi.extensions import db

    with app.app_context():
        c = db.session.get(Campaign, cid)
        assert c.status == "scheduled" and c.send_at.isoformat().startswith("2099-01-01T09:00")
    marketer.post(f"/admin/campaigns/{cid}/pause")
    with app.app_context():
        assert db.session.get(Campaign, cid).status == "paused"
    marketer.post(f"/admin/campaigns/{cid}/resume")
    with app.app_context():
        assert db.session.get(Campaign, cid).status == "scheduled"
    marketer.post(f"/admin/campaigns/{cid}/cancel")
    with app.app_context():
        assert db.session.get(Campaign, cid).status == "cancelled"
    page = marketer.post(f"/admin/campaigns/{cid}/resume", follow_redirects=True).get_data(as_text=True)
    assert "only a paused campaign" in page
    bad = marketer.post(f"/admin/campaigns/{cid}/send", {"at": "not a date"}, follow_redirects=True)
    assert "at:" in bad.get_data(as_text=True) or "send time" in bad.get_data(as_text=True)


def test_delete_only_a_draft(app, marketer):
    cid = _email_campaign(marketer, _segment(marketer))
    assert marketer.post(f"/admin/campaigns/{cid}/delete").status_code == 303
    assert marketer.get(f"/admin/campaigns/{cid}").status_code == 404
