"""Automations in the admin UI: the list with stats for viewers, create and edit from JSON through
automation.services (422 naming the field), enable / pause / resume with the marketer role and
CSRF, per-step stats after the engine took a contact through a journey."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import sqlalchemy as sa

from tests.campaigns.dispatch_fixtures import _clean_campaign_keys  # noqa: F401

CONSENT = {"source": "boutique Lyon", "at": "2024-03-01T09:00:00Z", "text": "J'accepte de recevoir la newsletter"}
WELCOME = {
    "name": "Bienvenue",
    "trigger": {"type": "subscription", "channel": "email"},
    "steps": [
        {"kind": "email", "subject": "Bienvenue {{ contact.first_name }}", "html": "<p>Merci, {{ contact.first_name }}.</p>"},
        {"kind": "wait", "days": 2},
        {"kind": "email", "subject": "Nos meilleures ventes", "text": "Découvrez nos meilleures ventes."},
    ],
}


def _status(app, automation_id: int) -> str:
    from automation.models import Automation
    from envoi.extensions import db

    with app.app_context():
        return db.session.scalar(sa.select(Automation.status).where(Automation.id == automation_id))


def _create(marketer, definition=WELCOME) -> int:
    resp = marketer.post("/admin/automations/new", {"definition": json.dumps(definition)})
    assert resp.status_code == 303, resp.get_data(as_text=True)[:2000]
    match = re.fullmatch(r".*/admin/automations/(\d+)", resp.headers["Location"])
    assert match, resp.headers["Location"]
    return int(match.group(1))


def _shown(page: str) -> dict:
    """The definition in the page's JSON textarea."""
    import html

    return json.loads(html.unescape(re.search(r'<textarea name="definition"[^>]*>(.*?)</textarea>', page, re.S).group(1)))


def _step_row(page: str, position: int) -> list[str]:
    row = re.search(rf'<tr data-position="{position}">(.*?)</tr>', page, re.S)
    assert row, f"no row for step {position}"
    return re.findall(r'<td class="num">(\d+)</td>', row.group(1))[1:]  # entered sent skipped failed waiting exited


def test_new_page_is_prefilled_with_a_valid_example(app, marketer):
    page = marketer.get("/admin/automations/new").get_data(as_text=True)
    textarea = re.search(r'<textarea name="definition"[^>]*>(.*?)</textarea>', page, re.S).group(1)
    import html

    example = json.loads(html.unescape(textarea))
    assert example["trigger"]["type"] == "subscription" and [s["kind"] for s in example["steps"]][:2] == ["email", "wait"]
    # The example is accepted as is.
    resp = marketer.post("/admin/automations/new", {"definition": html.unescape(textarea)})
    assert resp.status_code == 303


def test_viewer_sees_the_list_with_stats_but_cannot_enable(app, marketer, viewer):
    automation_id = _create(marketer)
    page = viewer.get("/admin/automations")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Bienvenue" in text and "subscription" in text and 'badge draft' in text
    assert text.count("<li>email:") == 2 and "<li>wait:" in text  # the per-step stats of the row
    assert 'href="/admin/automations"' in text  # the nav link
    show = viewer.get(f"/admin/automations/{automation_id}").get_data(as_text=True)
    assert 'id="steps"' in show and 'id="enable"' not in show and '<textarea name="definition"' not in show
    assert viewer.post(f"/admin/automations/{automation_id}/enable").status_code == 403
    assert viewer.post(f"/admin/automations/{automation_id}", {"definition": json.dumps(WELCOME)}).status_code == 403
    assert _status(app, automation_id) == "draft"


def test_bad_definitions_re_render_with_a_422_naming_the_field(app, marketer):
    bad = {**WELCOME, "steps": [WELCOME["steps"][0], {"kind": "branch", "rule": {"all": []}, "else": 0}]}
    resp = marketer.post("/admin/automations/new", {"definition": json.dumps(bad)})
    text = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "steps[1].else" in text
    assert "&#34;branch&#34;" in text or '"branch"' in text  # what was typed stays in the textarea
    resp = marketer.post("/admin/automations/new", {"definition": "{not json"})
    assert resp.status_code == 422 and "not JSON" in resp.get_data(as_text=True)
    from automation.models import Automation
    from envoi.extensions import db

    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Automation)) == 0
    automation_id = _create(marketer)
    resp = marketer.post(f"/admin/automations/{automation_id}",
                         {"definition": json.dumps({**WELCOME, "steps": [{"kind": "wait"}]})})
    assert resp.status_code == 422 and "steps[0]" in resp.get_data(as_text=True)
    assert marketer.get("/admin/automations/999999").status_code == 404


def test_edit_saves_through_the_service_and_the_page_shows_the_api_shape(app, marketer, api):
    automation_id = _create(marketer)
    shown = _shown(marketer.get(f"/admin/automations/{automation_id}").get_data(as_text=True))
    assert set(shown) <= {"name", "trigger", "audience", "topic", "reentry", "sender", "steps"}
    shown["name"] = "Bienvenue 2"
    shown["audience"] = {"field": "city", "op": "eq", "value": "Lyon"}
    shown["steps"] += [{"kind": "branch", "rule": {"field": "first_name", "op": "is_set"}, "then": "next", "else": "end"},
                       {"kind": "sms", "body": "Merci !"}]
    resp = marketer.post(f"/admin/automations/{automation_id}", {"definition": json.dumps(shown)})
    assert resp.status_code == 303
    body = api.get(f"/api/v1/automations/{automation_id}").get_json()
    assert body["name"] == "Bienvenue 2"
    assert [s["kind"] for s in body["steps"]] == ["email", "wait", "email", "branch", "sms"]
    page = marketer.get(f"/admin/automations/{automation_id}").get_data(as_text=True)
    assert "2 days" in page and "Else: end" in page and "Merci !" in page and "Lyon" in page
    assert _shown(page) == {k: body[k] for k in shown}  # the textarea holds the API's shape


def test_marketer_enables_pauses_and_resumes(app, marketer):
    automation_id = _create(marketer)
    base = f"/admin/automations/{automation_id}"
    assert 'id="enable"' in marketer.get(base).get_data(as_text=True)
    assert marketer.post(base + "/enable").status_code == 303
    assert _status(app, automation_id) == "active"
    page = marketer.get(base).get_data(as_text=True)
    assert 'id="pause"' in page and "Pause it to change its steps." in page
    # The unchanged JSON of a running journey saves (its name changes); new steps need a pause.
    shown = {**_shown(page), "name": "Bienvenue (actif)"}
    assert marketer.post(base, {"definition": json.dumps(shown)}).status_code == 303
    changed = {**shown, "steps": WELCOME["steps"][:1]}
    resp = marketer.post(base, {"definition": json.dumps(changed)})
    assert resp.status_code == 409 and "automation is active" in resp.get_data(as_text=True)
    assert marketer.post(base + "/pause").status_code == 303
    assert _status(app, automation_id) == "paused"
    assert marketer.post(base + "/pause").status_code == 303  # a conflict, flashed
    assert "automation is paused" in marketer.get(base).get_data(as_text=True)
    assert marketer.post(base + "/resume").status_code == 303
    assert _status(app, automation_id) == "active"
    assert "Bienvenue (actif)" in marketer.get("/admin/automations").get_data(as_text=True)


def test_post_without_csrf_is_refused(app, marketer):
    automation_id = _create(marketer)
    resp = marketer.client.post(f"/admin/automations/{automation_id}/enable")
    assert resp.status_code == 400
    resp = marketer.client.post("/admin/automations/new", data={"definition": json.dumps(WELCOME), "_csrf": "forged"})
    assert resp.status_code == 400
    assert _status(app, automation_id) == "draft"


def test_page_shows_per_step_stats_after_the_engine_ran_a_contact_through(app, marketer, worker):
    from automation.engine import tick
    from contacts.services import upsert_contact
    from envoi.types import utcnow

    automation_id = _create(marketer)
    assert marketer.post(f"/admin/automations/{automation_id}/enable").status_code == 303
    with app.app_context():
        upsert_contact({"email": "ada@example.org", "first_name": "Ada", "email_status": "confirmed",
                        "consent": CONSENT}, method="api")
        t0 = utcnow()
        report = tick(t0)
    assert report["enrolled"] == 1
    worker.join("automation")
    page = marketer.get(f"/admin/automations/{automation_id}").get_data(as_text=True)
    # entered, sent, skipped, failed, waiting, exited: the welcome went out, the wait was taken,
    # the contact waits at step 2 until it is due.
    assert [_step_row(page, i) for i in range(3)] == [["1", "1", "0", "0", "0", "0"], ["1", "0", "0", "0", "0", "0"],
                                                      ["1", "0", "0", "0", "1", "0"]]
    assert re.search(r'id="entered">1<', page)
    index = marketer.get("/admin/automations").get_data(as_text=True)
    assert "email: Entered 1 · Sent 0 · Waiting 1 · Exited 0" in index
    with app.app_context():
        tick(t0 + timedelta(days=2, minutes=1))
    worker.join("automation")
    page = marketer.get(f"/admin/automations/{automation_id}").get_data(as_text=True)
    assert _step_row(page, 2) == ["1", "1", "0", "0", "0", "0"]
    assert "Done 1" in page


def test_pages_in_french(app, marketer):
    automation_id = _create(marketer)
    marketer.post("/admin/lang", {"lang": "fr", "next": "/admin/automations"})
    text = marketer.get(f"/admin/automations/{automation_id}").get_data(as_text=True)
    assert "Étapes" in text and "Déclencheur" in text and "Activer" in text and "Automatisations" in text
