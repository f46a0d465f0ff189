"""Tracking end to end: messages sent by the real worker carry the pixel and click redirects, the public
routes record events and redirect only where a signed token says, bots are flagged, the switches work."""
from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa

from campaigns import dispatch, tracking
from campaigns.models import Campaign, ShortLink
from contacts.models import Contact
from envoi.extensions import db
from envoi.types import utcnow
from segments.models import MessageEvent
from tests.campaigns.dispatch_fixtures import (_clean_campaign_keys, make_campaign, make_contacts,  # noqa: F401
                                               quiet_off, run_worker, stub_broker)

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
SHOP = "https://shop.example.com/soldes?a=1&b=2"
HTML = ('<p>Bonjour {{ contact.first_name }}, <a href="https://shop.example.com/soldes?a=1&amp;b=2">les soldes</a>'
        ' et <a href="mailto:info@example.com">écrivez-nous</a>.</p>')
TEXT = "Bonjour {{ contact.first_name }}, les soldes : https://shop.example.com/soldes?a=1&b=2."


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def events(**where) -> list:
    """The events written, once the buffered hits are drained."""
    tracking.drain_hits()
    db.session.expire_all()
    query = sa.select(MessageEvent).order_by(MessageEvent.id)
    for key, value in where.items():
        query = query.where(getattr(MessageEvent, key) == value)
    return list(db.session.scalars(query))


def sent_messages(smtp_server) -> dict:
    return {m["to"][0]: m["message"] for m in smtp_server.messages}


def test_sent_email_carries_pixel_and_click_redirects_that_record_and_redirect(app, ctx, client, smtp_server,
                                                                              run_worker):
    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign(html=HTML, text=TEXT)
    dispatch.launch(campaign_id)
    run_worker()

    msg = sent_messages(smtp_server)["person0@example.org"]
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    base = app.config["BASE_URL"]
    clicks = re.findall(r'href="(' + re.escape(base) + r'/t/c/[^"]+)"', html)
    assert len(clicks) == 1 and "shop.example.com" not in html.split("unsubscribe")[0].replace(base, "")
    assert 'href="mailto:info@example.com"' in html  # only http(s) links are wrapped
    assert re.search(re.escape(base) + r"/unsubscribe/[^\"]+", html)  # our own links are left alone
    (pixel,) = re.findall(r'<img src="(' + re.escape(base) + r'/t/o/[^"]+\.gif)"', html)
    text_clicks = re.findall(re.escape(base) + r"/t/c/\S+", text)
    assert len(text_clicks) == 1 and "https://shop.example.com" not in text

    response = client.get(path_of(pixel.replace("&amp;", "&")), headers={"User-Agent": BROWSER})
    assert response.status_code == 200 and response.mimetype == "image/gif"
    assert response.data.startswith(b"GIF89a") and "no-store" in response.headers["Cache-Control"]
    response = client.get(path_of(clicks[0].replace("&amp;", "&")), headers={"User-Agent": BROWSER})
    assert response.status_code == 302 and response.headers["Location"] == SHOP
    response = client.get(path_of(text_clicks[0].rstrip(".")), headers={"User-Agent": BROWSER})
    assert response.status_code == 302 and response.headers["Location"] == SHOP

    recorded = [(e.kind, e.contact_id, e.campaign_id, e.channel, e.data) for e in events() if e.kind != "sent"]
    assert recorded == [("opened", contact_id, campaign_id, "email", {}),
                        ("clicked", contact_id, campaign_id, "email", {"url": SHOP}),
                        ("clicked", contact_id, campaign_id, "email", {"url": SHOP})]
    # Within seconds of the sending: what a link scanner does, not a person.
    assert all(e.is_bot for e in events() if e.kind != "sent")


def test_human_open_and_click_recorded_once_each_as_a_person(app, ctx, client):
    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign()
    sent_at = utcnow() - timedelta(hours=2)
    pixel = tracking.open_token(campaign_id, contact_id, now=sent_at)
    click = tracking.click_token(campaign_id, contact_id, "https://example.com/a?x=é", now=sent_at)

    assert client.get(f"/t/o/{pixel}.gif", headers={"User-Agent": BROWSER}).status_code == 200
    response = client.get(f"/t/c/{click}", headers={"User-Agent": BROWSER})
    assert response.status_code == 302 and response.headers["Location"] == "https://example.com/a?x=%C3%A9"

    got = [(e.kind, e.contact_id, e.campaign_id, e.is_bot) for e in events()]
    assert got == [("opened", contact_id, campaign_id, False), ("clicked", contact_id, campaign_id, False)]


def test_forged_or_altered_tokens_never_redirect_nor_record(app, ctx, client):
    from itsdangerous import URLSafeSerializer

    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign()
    past = utcnow() - timedelta(hours=1)
    good = tracking.click_token(campaign_id, contact_id, "https://example.com/ok", now=past)
    evil = "https://evil.example.net/phish"
    altered = good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB")
    other_secret = URLSafeSerializer("not-our-secret-key-000", salt=tracking.SALTS["click"]).dumps(
        [campaign_id, contact_id, int(past.timestamp()), evil])
    other_purpose = tracking.open_token(campaign_id, contact_id, now=past)  # signed, but for the pixel
    from optin.tokens import unsubscribe_token

    bad_tokens = [altered, other_secret, other_purpose, unsubscribe_token(contact_id, "email"), "x", "a" * 300,
                  URLSafeSerializer(app.config["SECRET_KEY"], salt=tracking.SALTS["click"]).dumps(
                      [campaign_id, contact_id, int(past.timestamp()), "javascript:alert(1)"])]
    for token in bad_tokens:
        response = client.get(f"/t/c/{token}")
        assert response.status_code == 404, token
        assert "Location" not in response.headers
    # The pixel answers an image whatever the token, and records nothing for one that is not its own.
    for token in [good, *(t for t in bad_tokens if t is not other_purpose)]:
        response = client.get(f"/t/o/{token}.gif")
        assert response.status_code == 200 and response.mimetype == "image/gif"
    assert events() == []
    # The genuine token still works, and only to its own URL.
    assert client.get(f"/t/c/{good}").headers["Location"] == "https://example.com/ok"


def test_prefetch_and_scanner_hits_are_flagged_and_left_out_of_opens(app, ctx, client):
    from campaigns.reports import campaign_report
    from segments.services import segment_query

    ids = make_contacts(6)
    campaign_id = make_campaign()
    long_ago = utcnow() - timedelta(hours=3)
    hits = [  # (contact, user agent, ip, sent at)
        (ids[0], BROWSER, "192.0.2.10", long_ago),                       # a person
        (ids[1], "Mozilla/5.0", "192.0.2.11", long_ago),                 # Apple MPP proxy user agent
        (ids[2], BROWSER, "17.58.1.20", long_ago),                       # from Apple's network
        (ids[3], "Barracuda Sentinel (EE)", "192.0.2.13", long_ago),     # security scanner
        (ids[4], BROWSER, "192.0.2.14", utcnow()),                       # seconds after sending
        (ids[5], "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
         "66.249.1.1", long_ago),                                        # Gmail's proxy fetches on open: a person
    ]
    for contact_id, ua, ip, sent_at in hits:
        token = tracking.open_token(campaign_id, contact_id, now=sent_at)
        assert client.get(f"/t/o/{token}.gif", headers={"User-Agent": ua},
                          environ_base={"REMOTE_ADDR": ip}).status_code == 200
    flagged = {e.contact_id: e.is_bot for e in events(kind="opened")}
    assert flagged == {ids[0]: False, ids[1]: True, ids[2]: True, ids[3]: True, ids[4]: True, ids[5]: False}

    assert campaign_report(campaign_id)["unique_opens"] == 2
    assert campaign_report(campaign_id)["bot_opens"] == 4
    # Engagement segments read the same events and ignore the machines.
    rule = {"engagement": {"kind": "opened", "within_days": 30}}
    members = set(db.session.scalars(segment_query(rule).with_only_columns(Contact.id)))
    assert members == {ids[0], ids[5]}


def test_tracking_off_for_the_campaign_or_refused_by_the_contact(app, ctx, client, smtp_server, run_worker):
    from optin.tokens import preferences_token

    ids = make_contacts(2)
    # The person refuses tracking in the preference centre (a real form post, CSRF included).
    page = client.get(f"/preferences/{preferences_token(ids[1])}")
    assert 'name="no_tracking"' in page.text
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
    response = client.post(f"/preferences/{preferences_token(ids[1])}",
                           data={"_csrf": csrf, "action": "save", "email": "on", "no_tracking": "on"})
    assert response.status_code == 200
    db.session.expire_all()
    assert db.session.get(Contact, ids[1]).tracking_refused is True
    assert db.session.get(Contact, ids[1]).email_status == "confirmed"
    assert "checked" in re.search(r'<input type="checkbox" name="no_tracking"[^>]*>', response.text).group(0)

    tracked_campaign = make_campaign(html=HTML, text=TEXT, name="Tracked")
    dispatch.launch(tracked_campaign)
    run_worker()
    messages = sent_messages(smtp_server)
    assert "/t/o/" in messages["person0@example.org"].get_body(("html",)).get_content()
    refused = messages["person1@example.org"]
    assert "/t/" not in refused.get_body(("html",)).get_content()
    assert SHOP.replace("&", "&amp;") in refused.get_body(("html",)).get_content()
    assert SHOP in refused.get_body(("plain",)).get_content()

    smtp_server.clear()
    untracked = make_campaign(html=HTML, text=TEXT, name="Untracked", track=False)
    dispatch.launch(untracked)
    run_worker()
    for msg in sent_messages(smtp_server).values():
        assert "/t/" not in msg.get_body(("html",)).get_content() + msg.get_body(("plain",)).get_content()
        assert SHOP in msg.get_body(("plain",)).get_content()

    # Accepting again (checkbox off) turns it back on.
    client.post(f"/preferences/{preferences_token(ids[1])}", data={"_csrf": csrf, "action": "save", "email": "on"})
    db.session.expire_all()
    assert db.session.get(Contact, ids[1]).tracking_refused is False


def test_campaign_tracking_switch_through_the_api(app, ctx, marketer_api, viewer_api):
    campaign_id = make_campaign()
    response = marketer_api.put(f"/api/v1/campaigns/{campaign_id}/tracking", json={"track": False})
    assert response.status_code == 200 and response.json == {"id": campaign_id, "track": False}
    db.session.expire_all()
    assert db.session.get(Campaign, campaign_id).track is False
    assert marketer_api.put(f"/api/v1/campaigns/{campaign_id}/tracking", json={"track": "no"}).json["fields"] == {
        "track": "expected true or false"}
    assert marketer_api.put("/api/v1/campaigns/999/tracking", json={"track": True}).status_code == 404
    assert viewer_api.put(f"/api/v1/campaigns/{campaign_id}/tracking", json={"track": True}).status_code == 403


def test_sms_links_are_shortened_to_our_domain_and_clicks_counted(app, ctx, client, fake_twilio, quiet_off,
                                                                 run_worker):
    (contact_id,) = make_contacts(1, channel="sms")
    campaign_id = make_campaign(channel="sms", body="Soldes -20% : https://shop.example.com/sms?x=1 !")
    dispatch.launch(campaign_id)
    run_worker()

    (message,) = fake_twilio.messages
    base = app.config["BASE_URL"]
    (short,) = re.findall(re.escape(base) + r"/s/([0-9A-Za-z]+)", message["Body"])
    assert "shop.example.com" not in message["Body"]
    # The second form: self-verifying, the campaign's first link (the first form is still followed).
    assert short == tracking.sms_code(campaign_id, contact_id, 0, "https://shop.example.com/sms?x=1")
    assert len(short) == 11 and tracking.read_sms_code(short) == (campaign_id, contact_id, 0)

    later = {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"}
    db.session.execute(sa.update(ShortLink).values(created_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    for _ in range(2):
        response = client.get(f"/s/{short}", headers=later)
        assert response.status_code == 302 and response.headers["Location"] == "https://shop.example.com/sms?x=1"
    assert client.get("/s/ZZZZZZZZZZ").status_code == 404
    assert client.get("/s/not-a-code!").status_code == 404
    tracking.drain_hits()
    db.session.expire_all()
    link = db.session.get(ShortLink, short)
    assert (link.clicks, link.campaign_id, link.contact_id) == (2, campaign_id, contact_id)
    got = [(e.kind, e.channel, e.contact_id, e.is_bot, e.data["url"]) for e in events(kind="clicked")]
    assert got == [("clicked", "sms", contact_id, False, "https://shop.example.com/sms?x=1")] * 2
    # A preview renders the same body without shortening (nothing written).
    from campaigns.rendering import compiled

    assert "shop.example.com/sms" in compiled(db.session.get(Campaign, campaign_id)).sms(
        db.session.get(Contact, contact_id))
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ShortLink)) == 1


def test_click_of_a_deleted_contact_still_redirects_and_records_nothing(app, ctx, client):
    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign()
    token = tracking.click_token(campaign_id, contact_id, "https://example.com/x", now=utcnow() - timedelta(hours=1))
    db.session.execute(sa.delete(Contact).where(Contact.id == contact_id))
    db.session.commit()
    assert client.get(f"/t/c/{token}").headers["Location"] == "https://example.com/x"
    assert events() == []


def sms_campaign_sent(fake_twilio, run_worker, body: str, contacts: int = 1) -> tuple[int, list[int], list[str]]:
    contact_ids = make_contacts(contacts, channel="sms")
    campaign_id = make_campaign(channel="sms", body=body)
    dispatch.launch(campaign_id)
    run_worker()
    return campaign_id, contact_ids, [m["Body"] for m in fake_twilio.messages]


def test_sms_codes_carry_their_link_and_forged_or_altered_ones_are_404(app, ctx, client, fake_twilio, quiet_off,
                                                                      run_worker):
    body = "Soldes https://shop.example.com/a et https://shop.example.com/b !"
    campaign_id, contact_ids, bodies = sms_campaign_sent(fake_twilio, run_worker, body, contacts=2)
    base = re.escape(app.config["BASE_URL"])
    codes = sorted(re.findall(base + r"/s/([0-9A-Za-z]+)", b) for b in bodies)
    assert all(len(pair) == 2 and all(len(c) == 11 for c in pair) for pair in codes)
    # Numbered per campaign: both messages share the numbers, each code names its contact.
    parsed = sorted(tracking.read_sms_code(c) for pair in codes for c in pair)
    assert parsed == sorted((campaign_id, k, p) for k in contact_ids for p in (0, 1))
    db.session.execute(sa.update(ShortLink).values(created_at=utcnow() - timedelta(hours=1)))
    db.session.commit()

    later = {"User-Agent": BROWSER}
    code = codes[0][0]
    target = client.get(f"/s/{code}", headers=later)
    assert target.status_code == 302 and target.headers["Location"] in ("https://shop.example.com/a",
                                                                        "https://shop.example.com/b")
    campaign, contact, position = tracking.read_sms_code(code)
    forged = [
        code[:-1] + ("A" if code[-1] != "A" else "B"),                                   # the MAC altered
        tracking.sms_code(campaign, contact, position, "https://evil.example.net/"),      # signed for another URL
        code[:-8] + tracking._BASE62[1 - position] + code[-7:],                           # another link
        code[:2] + tracking._BASE62[(tracking._BASE62.index(code[2]) + 1) % 62] + code[3:],  # another contact
        code[0] + "z" + code[2:],                                                         # another campaign
        code[:-7] + "0000000", code + "0", code[:-1],
    ]
    for bad in forged:
        assert client.get(f"/s/{bad}", headers=later).status_code == 404, bad
    # A MAC made with another key is refused too (no redirect to a URL we did not send).
    app.config["SECRET_KEY"], key = "another-key", app.config["SECRET_KEY"]
    try:
        other = tracking.sms_code(campaign, contact, position, "https://evil.example.net/")
    finally:
        app.config["SECRET_KEY"] = key
    assert client.get(f"/s/{other}", headers=later).status_code == 404

    got = [(e.contact_id, e.campaign_id, e.is_bot, e.data) for e in events(kind="clicked")]
    assert got == [(contact, campaign_id, False, {"url": target.headers["Location"], "code": code})]
    assert db.session.get(ShortLink, code).clicks == 1


def test_sms_clicks_right_after_sending_are_flagged_and_gone_links_not_recorded(app, ctx, client, fake_twilio,
                                                                                quiet_off, run_worker):
    campaign_id, (contact_id,), (body,) = sms_campaign_sent(fake_twilio, run_worker, "Vu ? https://shop.example.com/x")
    (code,) = re.findall(re.escape(app.config["BASE_URL"]) + r"/s/([0-9A-Za-z]+)", body)
    assert client.get(f"/s/{code}", headers={"User-Agent": BROWSER}).status_code == 302  # a link scanner's
    assert [e.is_bot for e in events(kind="clicked")] == [True]
    assert client.get(f"/s/{code}", headers={"User-Agent": BROWSER}).status_code == 302
    db.session.execute(sa.delete(ShortLink).where(ShortLink.code == code))  # e.g. the campaign is deleted
    db.session.commit()
    assert len(events(kind="clicked")) == 1


def test_sms_link_length_and_segments(app, ctx):
    """The code of the second form is one character longer than the first (ten): an SMS of 150 GSM-7
    characters with one link stays one segment with a code of either form for ids up to 62^3 / 62^4."""
    from campaigns.sms import sms_info

    url = "https://shop.example.com/soldes"
    base = app.config["BASE_URL"].rstrip("/")
    old = f"{base}/s/{tracking.short_code(1234, 5678901, url)}"
    new = {ids: f"{base}/s/{tracking.sms_code(*ids, 0, url)}"
           for ids in ((1, 1), (1234, 5678901), (200_000, 900_000_000), (14_000_000, 2**62))}
    assert len(old) - len(base) == 13
    assert {ids: len(link) - len(old) for ids, link in new.items()} == {
        (1, 1): 1, (1234, 5678901): 5, (200_000, 900_000_000): 7, (14_000_000, 2**62): 14}
    text = "Soldes d'hiver : -20 % sur tout le site jusqu'à dimanche, livraison offerte. "
    for link in (old, *new.values()):
        info = sms_info(text + link)
        assert info["encoding"] == "GSM-7" and info["characters"] == len(text) + len(link)
    assert sms_info(text + old)["segments"] == sms_info(text + new[(1234, 5678901)])["segments"] == 1
    assert tracking.sms_code(62**4, 1, 0, url) is None and tracking.sms_code(1, 1, 62, url) is None
