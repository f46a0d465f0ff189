"""POST /webhooks/twilio/status: signed by Twilio, moves an SMS delivery forward only."""
from __future__ import annotations

import sqlalchemy as sa

from campaigns import dispatch
from campaigns.models import Delivery
from contacts.models import Contact
from envoi.extensions import db
from optin.twilio import sign_for_tests
from segments.models import MessageEvent
from tests.campaigns.dispatch_fixtures import (_clean_campaign_keys, make_campaign, make_contacts,  # noqa: F401
                                               quiet_off, run_worker, stub_broker)


def callback(client, app, url: str, sid: str, status: str, token: str, **extra):
    params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC" + "0" * 32, **extra}
    path = url[len(app.config["BASE_URL"]):]
    signature = sign_for_tests(url, params, token)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def sent_sms(app, fake_twilio, run_worker, n=2):
    with app.app_context():
        ids = make_contacts(n, channel="sms")
        campaign_id = make_campaign(channel="sms")
        dispatch.launch(campaign_id)
    run_worker()
    assert len(fake_twilio.messages) == n
    return campaign_id, ids


def status_of(app, sid: str) -> Delivery:
    with app.app_context():
        return db.session.scalar(sa.select(Delivery).where(Delivery.provider_id == sid))


def test_callbacks_out_of_order_only_move_forward(app, client, fake_twilio, quiet_off, run_worker):
    campaign_id, _ = sent_sms(app, fake_twilio, run_worker)
    first, second = fake_twilio.messages
    token = fake_twilio.auth_token
    assert first["StatusCallback"].startswith(app.config["BASE_URL"] + "/webhooks/twilio/status?d=")

    # Twilio may deliver "delivered" before "sent": the late "sent" changes nothing.
    assert callback(client, app, first["StatusCallback"], first["sid"], "delivered", token).status_code == 204
    assert callback(client, app, first["StatusCallback"], first["sid"], "sent", token).status_code == 204
    assert callback(client, app, first["StatusCallback"], first["sid"], "queued", token).status_code == 204
    assert callback(client, app, first["StatusCallback"], first["sid"], "undelivered", token).status_code == 204
    assert status_of(app, first["sid"]).status == "delivered"

    callback(client, app, second["StatusCallback"], second["sid"], "sent", token)
    callback(client, app, second["StatusCallback"], second["sid"], "undelivered", token, ErrorCode="30003")
    callback(client, app, second["StatusCallback"], second["sid"], "delivered", token)
    row = status_of(app, second["sid"])
    assert (row.status, row.error_code) == ("undelivered", 30003)

    with app.app_context():
        stats = dispatch.stats(campaign_id)
        kinds = db.session.scalars(sa.select(MessageEvent.kind).where(MessageEvent.kind == "delivered")).all()
    assert (stats["sent"], stats["delivered"], stats["undelivered"]) == (2, 1, 1)
    assert kinds == ["delivered"]


def test_failed_with_21610_unsubscribes_the_number(app, client, fake_twilio, quiet_off, run_worker):
    _, ids = sent_sms(app, fake_twilio, run_worker, n=1)
    (message,) = fake_twilio.messages
    resp = callback(client, app, message["StatusCallback"], message["sid"], "failed", fake_twilio.auth_token,
                    ErrorCode="21610")
    assert resp.status_code == 204
    with app.app_context():
        assert db.session.get(Contact, ids[0]).sms_status == "unsubscribed"
    assert status_of(app, message["sid"]).status == "failed"


def test_unsigned_or_wrongly_signed_callbacks_are_refused(app, client, fake_twilio, quiet_off, run_worker):
    sent_sms(app, fake_twilio, run_worker, n=1)
    (message,) = fake_twilio.messages
    path = message["StatusCallback"][len(app.config["BASE_URL"]):]
    resp = client.post(path, data={"MessageSid": message["sid"], "MessageStatus": "delivered"})
    assert resp.status_code == 403 and resp.get_json()["error"]
    resp = callback(client, app, message["StatusCallback"], message["sid"], "delivered", "not-the-token")
    assert resp.status_code == 403
    assert status_of(app, message["sid"]).status == "sent"
    # Signed but malformed: 422 naming the field, never a 500.
    resp = callback(client, app, app.config["BASE_URL"] + "/webhooks/twilio/status?d=abc", message["sid"],
                    "delivered", fake_twilio.auth_token)
    assert resp.status_code == 422 and "d" in resp.get_json()["fields"]
    resp = callback(client, app, app.config["BASE_URL"] + "/webhooks/twilio/status", "", "", fake_twilio.auth_token)
    assert resp.status_code == 422 and {"MessageSid", "MessageStatus"} <= set(resp.get_json()["fields"])
    # An unknown message is acknowledged (Twilio must not retry it) and changes nothing.
    resp = callback(client, app, app.config["BASE_URL"] + "/webhooks/twilio/status", "SMunknown", "delivered",
                    fake_twilio.auth_token)
    assert resp.status_code == 204
