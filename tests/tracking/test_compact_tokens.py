"""The compact tokens of every campaign message (envoi.signing): unsubscribe, preferences, open, click.

Tampered, truncated, signed for another purpose or with another secret: refused. Links already sent
in itsdangerous's format still work. The sent message carries the same links and headers as
before: List-Unsubscribe and the footer's links open the contact's pages, every http(s) link
redirects to its own URL, the text part's bare URLs are wrapped exactly as a scan of the whole
text would wrap them.
"""
from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from itsdangerous import URLSafeSerializer

from campaigns import dispatch, tracking
from envoi import signing
from envoi.types import utcnow
from optin import tokens
from tests.campaigns.dispatch_fixtures import (_clean_campaign_keys, make_campaign, make_contacts,  # noqa: F401
                                               run_worker, stub_broker)

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def _old(app, salt: str, payload) -> str:
    """A token as the previous release wrote it (itsdangerous)."""
    return URLSafeSerializer(app.config["SECRET_KEY"], salt=salt).dumps(payload)


def _tampered(token: str) -> list[str]:
    """The token with one character changed at the start, the middle and the end, and cut short."""
    out = []
    for at in (0, len(token) // 2, len(token) - 1):
        swap = "A" if token[at] != "A" else "B"
        out.append(token[:at] + swap + token[at + 1:])
    return out + [token[:-1], token[:-4], token[4:], token + "A"]


def test_signing_round_trip_and_refusals():
    payload = signing.pack_ints(1, 2**63 - 1, 0) + "https://exemple.fr/é".encode()
    token = signing.sign("s3cret", "p", payload)
    assert signing.is_compact(token) and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert signing.unsign("s3cret", "p", token) == payload
    assert signing.unpack_ints(payload, 3) == ([1, 2**63 - 1, 0], "https://exemple.fr/é".encode())
    for bad in [*_tampered(token), "", "a", "a.b", "abc=", "é" * 10]:
        with pytest.raises(signing.BadToken):
            signing.unsign("s3cret", "p", bad)
    with pytest.raises(signing.BadToken):
        signing.unsign("s3cret", "other purpose", token)
    with pytest.raises(signing.BadToken):
        signing.unsign("another secret", "p", token)
    with pytest.raises(ValueError):
        signing.pack_ints(-1)
    with pytest.raises(signing.BadToken):  # a leading zero byte: not how pack_ints spells it
        signing.unpack_ints(b"\x02\x00\x01", 1)


def test_unsubscribe_and_preferences_tokens_compact_old_and_refused(app, ctx):
    unsub, prefs = tokens.unsubscribe_token(42, "sms"), tokens.preferences_token(42)
    assert signing.is_compact(unsub) and signing.is_compact(prefs)
    assert len(unsub) < 40 and len(prefs) < 40
    assert tokens.read_unsubscribe_token(unsub) == (42, "sms")
    assert tokens.read_unsubscribe_token(tokens.unsubscribe_token(7, "email")) == (7, "email")
    assert tokens.read_preferences_token(prefs) == 42
    # Links sent before the compact tokens still open the same pages.
    assert tokens.read_unsubscribe_token(_old(app, tokens.SALTS["unsubscribe"], [42, "email"])) == (42, "email")
    assert tokens.read_preferences_token(_old(app, tokens.SALTS["preferences"], 42)) == 42

    open_token = tracking.open_token(1, 42)
    refused = {
        "unsubscribe": [*_tampered(unsub), prefs, open_token, tokens.confirm_token(42, "email", [], None),
                        signing.sign("another secret", tokens.SALTS["unsubscribe"], signing.pack_ints(42) + b"e"),
                        signing.sign(app.config["SECRET_KEY"], tokens.SALTS["unsubscribe"], signing.pack_ints(42) + b"x"),
                        _old(app, tokens.SALTS["preferences"], 42), "x", "a.b"],
        "preferences": [*_tampered(prefs), unsub, open_token,
                        signing.sign(app.config["SECRET_KEY"], tokens.SALTS["preferences"], signing.pack_ints(42, 1)),
                        _old(app, tokens.SALTS["unsubscribe"], [42, "email"]), "x", "a.b"],
    }
    read = {"unsubscribe": tokens.read_unsubscribe_token, "preferences": tokens.read_preferences_token}
    for purpose, bad_tokens in refused.items():
        for bad in bad_tokens:
            with pytest.raises(tokens.TokenInvalid):
                read[purpose](bad)


def test_confirm_tokens_still_expire(app, ctx):
    token = tokens.confirm_token(42, "email", [3], None)
    assert tokens.read_confirm_token(token)["contact_id"] == 42
    with pytest.raises(tokens.TokenExpired):
        tokens.read_confirm_token(token, max_age=-1)


def test_tracking_tokens_compact_old_and_refused(app, ctx, client):
    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign()
    sent = utcnow() - timedelta(hours=2)
    epoch = int(sent.timestamp())
    url = "https://example.com/a?x=é&y=<1>"
    click, pixel = tracking.click_token(campaign_id, contact_id, url, now=sent), tracking.open_token(
        campaign_id, contact_id, now=sent)
    assert signing.is_compact(click) and signing.is_compact(pixel)
    assert tracking.read_click_token(click) == (campaign_id, contact_id, epoch, url)
    assert tracking.read_open_token(pixel) == (campaign_id, contact_id, epoch)
    old_click = _old(app, tracking.SALTS["click"], [campaign_id, contact_id, epoch, url])
    old_pixel = _old(app, tracking.SALTS["open"], [campaign_id, contact_id, epoch])
    assert tracking.read_click_token(old_click) == (campaign_id, contact_id, epoch, url)
    assert tracking.read_open_token(old_pixel) == (campaign_id, contact_id, epoch)
    for token in (click, old_click):  # both redirect, through the fast path and through Flask
        assert client.get(f"/t/c/{token}", headers={"User-Agent": BROWSER}).headers["Location"] \
            == "https://example.com/a?x=%C3%A9&y=%3C1%3E"
        assert client.get(f"/t/c/{token}?q", headers={"User-Agent": BROWSER}).status_code == 302

    secret = app.config["SECRET_KEY"]
    head = signing.pack_ints(campaign_id, contact_id, epoch)
    evil = [*_tampered(click), pixel, tokens.unsubscribe_token(contact_id, "email"),
            signing.sign("another secret", tracking.SALTS["click"], head + b"https://evil.example.net/"),
            signing.sign(secret, tracking.SALTS["open"], head + b"https://evil.example.net/"),  # another purpose
            signing.sign(secret, tracking.SALTS["click"], head + b"javascript:alert(1)"),
            signing.sign(secret, tracking.SALTS["click"], head + b"https://x.example/\xff"),
            signing.sign(secret, tracking.SALTS["click"], signing.pack_ints(0, contact_id, epoch) + b"https://a.b/")]
    for token in evil:
        with pytest.raises(tracking.TokenInvalid):
            tracking.read_click_token(token)
        response = client.get(f"/t/c/{token}")
        assert response.status_code == 404 and "Location" not in response.headers
    for token in [*_tampered(pixel), click, signing.sign(secret, tracking.SALTS["open"], head + b"x")]:
        with pytest.raises(tracking.TokenInvalid):
            tracking.read_open_token(token)


def test_text_links_wrapped_as_a_scan_of_the_whole_text_would(app, ctx):
    text = ("début https://a.example/x. et HTTP://B.example/y?z=1,\n\nrien ici\n"
            "http://c.example/(p) https://d.example/e://f https://\nhttps://g.example/h\n"
            "https://x.y\r\nfin sans lien\nhttps://ex.com/" + "z" * 2100 + "\nhttps://e.example/é")
    base = app.config["BASE_URL"].rstrip("/")
    wrapped = tracking.track_email({"text": text}, 1, 2)["text"]
    seen = {}

    def wrap(match):
        url = match.group(0)
        if not tracking._trackable(url) or tracking._ours(url, base):
            return url
        return seen.setdefault(url, f"{base}/t/c/{tracking.click_token(1, 2, url)}")

    assert wrapped == tracking._URL.sub(wrap, text)
    assert wrapped.count("/t/c/") == 7


def test_sent_message_links_and_headers(app, ctx, client, smtp_server, run_worker):
    from contacts.models import Contact
    from envoi.extensions import db

    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign(
        html='<p>Bonjour {{ contact.first_name }}, <a href="https://shop.example.com/s?a=1&amp;b=2">soldes</a>'
             " <a href='https://shop.example.com/t'>t</a> <a href=\"mailto:i@example.com\">m</a></p>",
        text="Soldes : https://shop.example.com/s?a=1&b=2 et https://shop.example.com/t.\n")
    dispatch.launch(campaign_id)
    run_worker()

    (sent,) = smtp_server.messages
    msg, base = sent["message"], app.config["BASE_URL"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    (one_click,) = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    unsub_path = urlsplit(one_click).path
    assert one_click == f"{base}{unsub_path}?c={campaign_id}" and unsub_path.startswith("/unsubscribe/")
    assert tokens.read_unsubscribe_token(unsub_path.rsplit("/", 1)[1]) == (contact_id, "email")
    assert msg["X-Envoi-Delivery"] and msg["Message-ID"].startswith(f"<d{msg['X-Envoi-Delivery']}.c{campaign_id}.")

    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert one_click.replace("&", "&amp;") in html and one_click in text  # the footer's link, in both parts
    (prefs,) = set(re.findall(re.escape(base) + r"/preferences/([A-Za-z0-9_-]+)", html + text))
    assert tokens.read_preferences_token(prefs) == contact_id
    assert 'href="mailto:i@example.com"' in html
    html_clicks = re.findall(r"""href=["']""" + re.escape(base) + r"/t/c/([^\"']+)[\"']", html)
    text_clicks = re.findall(re.escape(base) + r"/t/c/([A-Za-z0-9_-]+)", text)
    urls = ["https://shop.example.com/s?a=1&b=2", "https://shop.example.com/t"]
    for found in (html_clicks, text_clicks):
        assert [tracking.read_click_token(t)[:2] + tracking.read_click_token(t)[3:] for t in found] == [
            (campaign_id, contact_id, url) for url in urls]
    assert html_clicks == text_clicks  # one token per URL and message
    (pixel,) = re.findall(re.escape(base) + r"/t/o/([A-Za-z0-9_-]+)\.gif", html)
    assert tracking.read_open_token(pixel)[:2] == (campaign_id, contact_id)

    assert client.get(f"/t/c/{html_clicks[0]}", headers={"User-Agent": BROWSER}).headers["Location"] == urls[0]
    assert client.post(unsub_path + f"?c={campaign_id}", data={"List-Unsubscribe": "One-Click"}).status_code < 400
    db.session.expire_all()
    assert db.session.get(Contact, contact_id).email_status == "unsubscribed"


def test_a_token_has_one_spelling():
    """The last base64url character of a token may carry spare bits: a token differing only there
    decodes to the same bytes, and must be refused all the same."""
    for n in range(1, 40):  # payload lengths that leave 2 or 4 spare bits in the last character
        token = signing.sign("s3cret", "p", b"x" * n)
        assert signing.unsign("s3cret", "p", token) == b"x" * n
        last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for other in last:
            if other != token[-1]:
                with pytest.raises(signing.BadToken):
                    signing.unsign("s3cret", "p", token[:-1] + other)
