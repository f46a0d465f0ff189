"""Journeys end to end with a controllable clock: the API defines and enables them, the
scheduler's tick (`now=`) enrolls and enqueues, a real Dramatiq worker (StubBroker) takes the
steps, messages land in the dev outbox and in `deliveries`."""
from __future__ import annotations

from datetime import date, timedelta

import sqlalchemy as sa

from automation.models import JourneyRun
from envoi.extensions import db
from envoi.types import utcnow
from tests.automation.conftest import journey_deliveries, later, outbox

CONSENT = {"source": "boutique Lyon", "at": "2024-03-01T09:00:00Z", "text": "J'accepte de recevoir la newsletter"}

WELCOME = {
    "name": "Bienvenue",
    "trigger": {"type": "subscription", "channel": "email"},
    "steps": [
        {"kind": "email", "subject": "Bienvenue {{ contact.first_name | default('client') }}",
         "html": "<p>Merci de votre inscription, {{ contact.first_name }}.</p>"},
        {"kind": "wait", "days": 2},
        {"kind": "email", "subject": "Nos meilleures ventes", "text": "Découvrez nos meilleures ventes."},
    ],
}


def _create(api, definition) -> int:
    resp = api.post("/api/v1/automations", json=definition)
    assert resp.status_code == 201, resp.get_json()
    automation_id = resp.get_json()["id"]
    assert resp.get_json()["status"] == "draft"
    resp = api.post(f"/api/v1/automations/{automation_id}/enable")
    assert resp.status_code == 200 and resp.get_json()["status"] == "active", resp.get_json()
    return automation_id


def _contact(api, **fields) -> int:
    body = {"email": "ada@example.org", "first_name": "Ada", "email_status": "confirmed", "consent": CONSENT, **fields}
    resp = api.post("/api/v1/contacts", json=body)
    assert resp.status_code in (200, 201), resp.get_json()
    return resp.get_json()["id"]


def test_confirmed_signup_gets_the_welcome_now_and_the_second_step_after_the_delay(api, journey):
    automation_id = _create(api, WELCOME)
    # Before it was enabled: a confirmation does not enter it.
    contact_id = _contact(api)
    t0 = utcnow()

    report = journey(t0)
    assert report["enrolled"] == 1
    mails = outbox(to="ada@example.org")
    assert [m.subject for m in mails] == ["Bienvenue Ada"]
    assert "Merci de votre inscription, Ada." in mails[0].html
    assert "/unsubscribe/" in mails[0].body  # the footer with the unsubscribe link, as campaigns have

    journey(later(t0, minutes=1))  # a rerun of the tick enrolls nobody twice, sends nothing more
    journey(later(t0, days=1))
    assert len(outbox()) == 1
    journey(later(t0, days=2, minutes=1))
    assert [m.subject for m in outbox(to="ada@example.org")] == ["Bienvenue Ada", "Nos meilleures ventes"]
    journey(later(t0, days=5))
    assert len(outbox()) == 2

    deliveries = journey_deliveries(contact_id)
    assert [(d.journey_step, d.status, d.campaign_id) for d in deliveries] == [(0, "sent", None), (2, "sent", None)]
    stats = api.get(f"/api/v1/automations/{automation_id}/stats").get_json()
    assert stats["runs"] == {"active": 0, "done": 1, "exited": 0}
    assert [(s["entered"], s["sent"], s["waiting"]) for s in stats["steps"]] == [(1, 1, 0), (1, 0, 0), (1, 1, 0)]
    # The timeline shows both mailings and the steps taken.
    timeline = api.get(f"/api/v1/contacts/{contact_id}/timeline?limit=50").get_json()["items"]
    mailings = [i for i in timeline if i["type"] == "delivery"]
    assert len(mailings) == 2 and all(i["kind"] == "mailing" and i["journey_run_id"] for i in mailings)
    steps = [i for i in timeline if i["type"] == "action" and i["kind"] == "automation"]
    assert {s["data"]["kind"] for s in steps} == {"wait", "end"}


def test_a_confirmation_before_the_automation_was_enabled_does_not_enter(api, journey):
    _contact(api)
    _create(api, WELCOME)
    journey(utcnow())
    assert outbox() == []


def test_birthday_tomorrow_gets_the_offer_once_not_again_on_a_rerun(api, journey):
    t0 = utcnow()
    tomorrow = (t0 + timedelta(days=1)).date()
    born = date(1990, tomorrow.month, tomorrow.day) if (tomorrow.month, tomorrow.day) != (2, 29) else date(1992, 2, 29)
    in_three_days = (t0 + timedelta(days=3)).date()
    _contact(api, email="birthday@example.org", birth_date=born.isoformat())
    _contact(api, email="later@example.org", first_name="Léa",
             birth_date=date(1985, in_three_days.month, min(in_three_days.day, 28)).isoformat())
    _contact(api, email="nobirthday@example.org")
    _contact(api, email="gone@example.org", birth_date=born.isoformat(), email_status="unsubscribed")
    automation_id = _create(api, {
        "name": "Anniversaire", "trigger": {"type": "anniversary", "field": "birth_date", "days_before": 1},
        "steps": [{"kind": "email", "subject": "Joyeux anniversaire {{ contact.first_name }} !",
                   "html": "<p>-20% avec le code ANNIV.</p>"}]})

    journey(t0)
    journey(later(t0, minutes=1))     # the scheduler runs again...
    journey(later(t0, hours=3))       # ... and again, later the same day
    mails = outbox()
    assert [(m.to, m.subject) for m in mails] == [("birthday@example.org", "Joyeux anniversaire Ada !")]
    journey(later(t0, days=1))        # the next day looks at the day after: someone else, not her again
    assert [m.to for m in outbox()].count("birthday@example.org") == 1
    runs = db.session.scalars(sa.select(JourneyRun).where(JourneyRun.automation_id == automation_id)).all()
    assert [r.occurrence_key for r in runs] == [f"birth_date:{tomorrow.year}"]
    assert runs[0].status == "done"


def test_purchase_of_sku_triggers_the_follow_up_with_the_complementary_product_once_per_order(api, journey):
    contact_id = _contact(api)
    _create(api, {
        "name": "Après la tente", "trigger": {"type": "purchase", "sku": "TENT-2P"},
        "steps": [{"kind": "email", "subject": "Votre {{ trigger.name }}",
                   "html": "<p>Merci pour {{ trigger.name }} (commande {{ trigger.order_ref }}).</p>"
                           "{% if trigger.sku == 'TENT-2P' %}<p>Complétez-la avec le tapis de sol TARP-2P.</p>"
                           "{% endif %}"}]})
    line = {"contact": {"id": contact_id}, "sku": "TENT-2P", "name": "Tente 2 places", "category": "camping",
            "amount": "199.00", "currency": "EUR", "order_ref": "A-1"}
    resp = api.post("/api/v1/purchases", json=[line, {**line, "sku": "PEGS", "name": "Sardines", "amount": "9.90"}])
    assert resp.status_code in (200, 201), resp.get_json()
    api.post("/api/v1/purchases", json=[{**line, "sku": "LAMP", "name": "Lampe", "order_ref": "A-0"}])
    t0 = utcnow()
    journey(t0)
    mails = outbox()
    assert [m.subject for m in mails] == ["Votre Tente 2 places"]
    assert "tapis de sol TARP-2P" in mails[0].html and "commande A-1" in mails[0].html

    api.post("/api/v1/purchases", json=[line])  # the same order line sent again: a duplicate
    journey(later(t0, minutes=1))
    assert len(outbox()) == 1
    api.post("/api/v1/purchases", json=[{**line, "order_ref": "B-7"}])  # a second order: a second follow-up
    journey(later(t0, minutes=2))
    journey(later(t0, minutes=3))
    mails = outbox()
    assert len(mails) == 2 and "commande B-7" in mails[1].html


def test_an_unsubscribe_between_two_steps_stops_the_journey(api, journey):
    from optin.services import unsubscribe

    automation_id = _create(api, WELCOME)
    contact_id = _contact(api)
    other_id = _contact(api, email="bob@example.org", first_name="Bob")
    t0 = utcnow()
    journey(t0)
    assert len(outbox()) == 2
    assert unsubscribe(contact_id, "email", {}) is True
    journey(later(t0, days=3))
    assert [m.to for m in outbox()] == ["ada@example.org", "bob@example.org", "bob@example.org"]
    run = db.session.scalar(sa.select(JourneyRun).where(JourneyRun.contact_id == contact_id))
    assert (run.status, run.exit_reason, run.step) == ("exited", "unsubscribed", 2)
    stats = api.get(f"/api/v1/automations/{automation_id}/stats").get_json()
    assert stats["runs"] == {"active": 0, "done": 1, "exited": 1}
    assert stats["steps"][2]["exited"] == 1 and stats["steps"][2]["sent"] == 1
    assert other_id


def test_an_unsubscribe_seen_at_send_time_skips_and_exits(api, journey, ctx):
    """Between the tick and the worker: the consent check at send time catches it."""
    from automation.engine import advance_batch, tick
    from optin.services import unsubscribe

    _create(api, WELCOME)
    contact_id = _contact(api)
    t0 = utcnow()
    tick(t0)
    unsubscribe(contact_id, "email", {})
    run_id = db.session.scalar(sa.select(JourneyRun.id))
    assert advance_batch(run_id, run_id, t0) == {"exited": 1}
    assert outbox() == []
    assert [(d.status, d.error) for d in journey_deliveries()] == [("skipped", "email status is unsubscribed")]


def test_pause_keeps_contacts_in_place_and_resume_continues(api, journey):
    automation_id = _create(api, WELCOME)
    _contact(api)
    t0 = utcnow()
    journey(t0)
    assert api.post(f"/api/v1/automations/{automation_id}/pause").get_json()["status"] == "paused"
    journey(later(t0, days=3))
    assert len(outbox()) == 1
    stats = api.get(f"/api/v1/automations/{automation_id}/stats").get_json()
    assert stats["steps"][2]["waiting"] == 1
    assert api.post(f"/api/v1/automations/{automation_id}/pause").status_code == 409
    assert api.post(f"/api/v1/automations/{automation_id}/resume").get_json()["status"] == "active"
    journey(later(t0, days=3, minutes=1))
    assert len(outbox()) == 2


def test_branch_on_a_phone_sends_sms_or_email_and_waits_until_a_time_of_day(api, journey, quiet_off):
    automation_id = _create(api, {
        "name": "Relance panier", "trigger": {"type": "event", "name": "cart_abandoned"},
        "steps": [
            {"kind": "wait", "hours": 1, "until": "10:00"},
            {"kind": "branch", "rule": {"field": "sms_status", "op": "eq", "value": "confirmed"}, "else": 3},
            {"kind": "sms", "body": "{{ contact.first_name }}, votre panier de {{ trigger.data.total }} EUR vous attend"},
            {"kind": "email", "subject": "Votre panier", "text": "Il vous attend : {{ trigger.data.total }} EUR"},
        ]})
    sms_id = _contact(api, email="sms@example.org", phone="+33612345678", sms_status="confirmed",
                      timezone="Europe/Paris")
    _contact(api, email="mail@example.org", timezone="America/New_York")
    for ref in ({"id": sms_id}, {"email": "mail@example.org"}):
        resp = api.post("/api/v1/events", json={"name": "cart_abandoned", "contact": ref, "data": {"total": 42}})
        assert resp.status_code == 202, resp.get_json()
    t0 = utcnow()
    journey(t0)
    assert outbox("sms") == [] and outbox() == []
    runs = db.session.scalars(sa.select(JourneyRun).order_by(JourneyRun.contact_id)).all()
    from zoneinfo import ZoneInfo

    for run, tz in zip(runs, ("Europe/Paris", "America/New_York")):
        local = run.next_step_at.astimezone(ZoneInfo(tz))
        assert (local.hour, local.minute) == (10, 0) and run.next_step_at >= later(t0, hours=1)
    journey(later(t0, days=2))
    sms = outbox("sms")
    assert [(m.to, m.body.splitlines()[0]) for m in sms] == [("+33612345678", "Ada, votre panier de 42 EUR vous attend")]
    mails = outbox()
    # The SMS contact went on to step 3 as well (a branch's "then" is the next step).
    assert sorted(m.to for m in mails) == ["mail@example.org", "sms@example.org"]
    stats = api.get(f"/api/v1/automations/{automation_id}/stats").get_json()
    assert [s["sent"] for s in stats["steps"]] == [0, 0, 1, 2]


def test_bad_definitions_are_422_naming_the_field(api):
    cases = [
        ({**WELCOME, "trigger": {"type": "lunar"}}, "trigger.type"),
        ({**WELCOME, "trigger": {"type": "winback"}}, "trigger.days"),
        ({**WELCOME, "trigger": {"type": "anniversary", "field": "attributes.nope"}}, "trigger.field"),
        ({**WELCOME, "steps": [{"kind": "email", "subject": "x", "html": "{{ contact.__class__ }}"}]}, "steps[0].html"),
        ({**WELCOME, "steps": [{"kind": "email", "subject": "x", "html": "{% if %}"}]}, "steps[0].html"),
        ({**WELCOME, "steps": [{"kind": "wait"}]}, "steps[0]"),
        ({**WELCOME, "steps": [{"kind": "wait", "until": "25:00"}]}, "steps[0].until"),
        ({**WELCOME, "steps": [{"kind": "sms", "body": "a"}, {"kind": "branch", "rule": {}, "else": 0}]},
         "steps[1].else"),
        ({**WELCOME, "steps": [{"kind": "branch", "rule": {"field": "nope", "op": "eq", "value": 1}}]},
         "steps[0].rule"),
        ({**WELCOME, "audience": {"field": "city", "op": "zz", "value": 1}}, "audience"),
        ({**WELCOME, "reentry": "sometimes"}, "reentry"),
        ({**WELCOME, "steps": []}, "steps"),
    ]
    for body, field in cases:
        resp = api.post("/api/v1/automations", json=body)
        assert resp.status_code == 422, (field, resp.get_json())
        fields = resp.get_json()["fields"]
        assert any(k == field or k.startswith(field + ".") for k in fields), (field, fields)
    resp = api.post("/api/v1/events", json={"contact": {"email": "x@example.org"}})
    assert resp.status_code == 422 and "name" in resp.get_json()["fields"]
    resp = api.post("/api/v1/events", json={"name": "x", "contact": {"email": "nobody@example.org"}})
    assert resp.status_code == 404
    assert api.get("/api/v1/automations/999").status_code == 404


def test_steps_change_only_while_not_active(api):
    automation_id = _create(api, WELCOME)
    resp = api.patch(f"/api/v1/automations/{automation_id}", json={"steps": WELCOME["steps"][:1]})
    assert resp.status_code == 409
    assert api.delete(f"/api/v1/automations/{automation_id}").status_code == 409
    api.post(f"/api/v1/automations/{automation_id}/pause")
    resp = api.patch(f"/api/v1/automations/{automation_id}", json={"steps": WELCOME["steps"][:1], "name": "Court"})
    assert resp.status_code == 200 and len(resp.get_json()["steps"]) == 1 and resp.get_json()["name"] == "Court"
    listed = api.get("/api/v1/automations").get_json()["items"]
    assert [a["id"] for a in listed] == [automation_id]
    assert api.delete(f"/api/v1/automations/{automation_id}").status_code == 204


def test_winback_enters_lapsed_customers_once_per_lapse(api, journey, ctx):
    from contacts.models import Contact

    t0 = utcnow()
    _create(api, {"name": "Vous nous manquez", "trigger": {"type": "winback", "days": 90},
                  "audience": {"field": "city", "op": "eq", "value": "Lyon"},
                  "steps": [{"kind": "email", "subject": "Vous nous manquez", "text": "-10% pour revenir"}]})
    for email, days, city in (("lapsed@example.org", 120, "Lyon"), ("recent@example.org", 10, "Lyon"),
                              ("paris@example.org", 200, "Paris")):
        cid = _contact(api, email=email, city=city)
        contact = db.session.get(Contact, cid)
        contact.purchase_count, contact.last_purchase_at = 3, t0 - timedelta(days=days)
        db.session.commit()
    journey(t0)
    journey(later(t0, hours=1))
    assert [m.to for m in outbox()] == ["lapsed@example.org"]
    journey(later(t0, days=81))  # "recent" lapses now
    assert [m.to for m in outbox()] == ["lapsed@example.org", "recent@example.org"]


def test_sms_step_in_quiet_hours_waits_in_place_then_sends_once(api, journey):
    from zoneinfo import ZoneInfo

    from campaigns.sms import next_allowed_time

    _create(api, {"name": "Bienvenue SMS", "trigger": {"type": "subscription", "channel": "sms"},
                  "steps": [{"kind": "sms", "body": "Bienvenue {{ contact.first_name }} !"}]})
    _contact(api, phone="+33612345678", sms_status="confirmed", timezone="Europe/Paris")
    paris = ZoneInfo("Europe/Paris")
    local = utcnow().astimezone(paris) + timedelta(days=1)
    night = local.replace(hour=23, minute=0, second=0, microsecond=0).astimezone(ZoneInfo("UTC"))
    journey(night)
    assert outbox("sms") == []
    run = db.session.scalar(sa.select(JourneyRun))
    allowed = next_allowed_time(night, "Europe/Paris")
    assert run.status == "active" and run.step == 0 and run.next_step_at == allowed > night
    assert [(d.status, d.attempts) for d in journey_deliveries()] == [("queued", 0)]
    journey(later(allowed, minutes=1))
    journey(later(allowed, minutes=2))
    assert [m.body.splitlines()[0] for m in outbox("sms")] == ["Bienvenue Ada !"]
    assert [(d.status, d.attempts) for d in journey_deliveries()] == [("sent", 1)]


def test_merging_two_contacts_in_the_same_journey_keeps_one_run_per_occurrence(api, journey):
    from contacts.dedupe import merge_contacts

    t0 = utcnow()
    tomorrow = (t0 + timedelta(days=1)).date()
    born = date(1990, tomorrow.month, min(tomorrow.day, 28)).isoformat()
    automation_id = _create(api, {
        "name": "Anniversaire", "trigger": {"type": "anniversary", "days_before": 1},
        "steps": [{"kind": "email", "subject": "Joyeux anniversaire", "text": "-20%"},
                  {"kind": "wait", "days": 3}, {"kind": "email", "subject": "Plus que 2 jours", "text": "-20%"}]})
    a = _contact(api, email="a@example.org", birth_date=born)
    b = _contact(api, email="b@example.org", birth_date=born)
    journey(t0)
    assert len(outbox()) == 2
    merge_contacts(a, [b])
    runs = db.session.scalars(sa.select(JourneyRun).order_by(JourneyRun.id)).all()
    assert [(r.contact_id, r.status) for r in runs] == [(a, "active"), (a, "exited")]
    assert len(journey_deliveries(a)) == 2  # both messages stay in the survivor's history
    journey(later(t0, days=4))
    assert [m.to for m in outbox()] == ["a@example.org", "b@example.org", "a@example.org"]
    assert api.get(f"/api/v1/automations/{automation_id}/stats").get_json()["runs"]["exited"] == 1
