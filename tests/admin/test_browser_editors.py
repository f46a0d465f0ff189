"""The live editors in a real browser (Debian's chromium through Playwright): every rule kind
of the segment grammar in the builder, both ways with the JSON; the form editor's live preview."""
from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.admin.conftest import PASSWORD
from tests.browser import serve_live


@pytest.fixture
def live(app):
    yield from serve_live(app, SMTP_URL=None, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None)


@pytest.fixture
def staff_page(app, live, chromium):
    from envoi.auth.services import create_user

    with app.app_context():
        create_user("marketer@example.org", "marketer", PASSWORD)
    context = chromium.new_context(locale="en-GB", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(live.url + "/admin/login")
    page.get_by_label("Email").fill("marketer@example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    yield page
    context.close()


def _rules(page):
    return json.loads(page.locator("#rules-json").input_value())


def test_builder_adds_every_rule_kind_negates_groups_and_reads_the_json_back(app, staff_page):
    from contacts.services import create_topic
    from tests.segments.conftest import Seed

    with app.app_context():
        create_topic("news", "News")
        seed = Seed()
        tee = seed.contact(email_status="confirmed")
        seed.purchase(tee, sku="TEE", days_ago=3)
        seed.contact(email_status="confirmed")
        seed.contact(sms_status="confirmed", phone="+33612345678")
        seed.refresh_aggregates()
        seed.commit()
    page = staff_page
    page.goto(page.url.replace("/admin/", "/admin/segments/new"))
    count = page.locator("#segment-count")
    expect(count).to_have_text("3")  # {"all": []}

    # Purchases: the default (within 90 days) plus a SKU.
    page.get_by_role("button", name="+ Purchases").click()
    row = page.locator("#builder .rule-purchases")
    row.get_by_label("purchases.sku").fill("TEE")
    expect(count).to_have_text("1")
    assert _rules(page) == {"all": [{"purchases": {"within_days": 90, "sku": "TEE"}}]}
    row.get_by_label("purchases.count.op").select_option("gte")
    row.get_by_label("purchases.count.value").fill("1")
    expect(count).to_have_text("1")
    # "not" wraps the rule: everyone but the TEE buyer.
    row.get_by_label("not").check()
    expect(count).to_have_text("2")
    assert _rules(page)["all"][0] == {"not": {"purchases": {"within_days": 90, "sku": "TEE",
                                                            "count": {"op": "gte", "value": 1}}}}

    # Subscription: the channel and its statuses; then a topic.
    page.get_by_role("button", name="+ Subscription").click()
    sub = page.locator("#builder .rule-subscription")
    sub.get_by_label("subscription.channel").select_option("sms")
    expect(count).to_have_text("1")
    sub.get_by_label("subscription.status").select_option("none")
    expect(count).to_have_text("1")  # not TEE, sms none: the second contact

    # An "any" group holding RFM and engagement rules.
    page.locator("#builder .group-actions").last.get_by_role("button", name="+ Add group").click()
    group = page.locator("#builder .group .group")
    group.locator("select.mode").select_option("any")
    group.locator(".cond").first.get_by_role("button", name="Delete").click()  # its empty city condition
    group.get_by_role("button", name="+ RFM score").click()
    group.get_by_role("button", name="+ Engagement").click()
    eng = group.locator(".rule-engagement")
    eng.get_by_label("engagement.kind").select_option("clicked")
    eng.get_by_label("engagement.channel").select_option("email")
    rfm = group.locator(".rule-rfm")
    rfm.get_by_label("rfm.group").fill("champions, loyal")
    rfm.get_by_label("rfm.recency.op").select_option("between")
    rfm.get_by_label("rfm.recency.value").fill("3, 5")
    expect(count).to_have_text("0")
    expect(page.locator("#segment-error")).to_have_text("")
    expect(page.locator("#builder .cond input.negate")).to_have_count(4)  # each rule can be negated
    rules = _rules(page)
    assert rules["all"][2] == {"any": [{"rfm": {"group": ["champions", "loyal"],
                                                "recency": {"op": "between", "value": [3, 5]}}},
                                       {"engagement": {"kind": "clicked", "within_days": 30, "channel": "email"}}]}
    page.screenshot(path=str(_shot_dir() / "segment-builder-every-kind.png"), full_page=True)

    # The other way: JSON typed in the textarea becomes builder rows.
    typed = {"all": [{"not": {"field": "email_status", "op": "eq", "value": "confirmed"}},
                     {"not": {"all": [{"engagement": {"kind": "opened", "older_than_days": 7}}]}},
                     {"any": [{"subscription": {"topic": "news"}},
                              {"subscription": {"channel": "sms", "status": "confirmed"}}]}]}
    page.locator("#rules-json").fill(json.dumps(typed))
    subs = page.locator("#builder .rule-subscription")
    expect(subs.first.get_by_label("subscription.topic")).to_have_value("news")
    expect(subs.nth(1).get_by_label("subscription.status")).to_have_value("confirmed")
    expect(page.locator("#builder .cond.negated select.field")).to_have_value("email_status")
    nested = page.locator("#builder .group .group.negated")
    expect(nested.get_by_label("engagement.older_than_days")).to_have_value("7")
    expect(page.locator("#builder .raw")).to_have_count(0)  # nothing left as raw JSON
    expect(count).to_have_text("1")  # the SMS contact: email status none
    assert _rules(page) == typed
    page.get_by_label("Name").fill("Every kind")
    page.locator("#save-segment").click()
    expect(page.locator(".flash.ok")).to_be_visible()
    assert _rules(page) == typed


def _shot_dir():
    import os
    from pathlib import Path

    from tests.conftest import ROOT

    path = Path(os.environ.get("ENVOI_TEST_SCREENSHOTS") or ROOT / "test-artifacts" / "admin-journey")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_form_editor_previews_the_hosted_page_and_the_popup_as_you_type(app, staff_page):
    from contacts.models import Contact
    from contacts.services import create_topic
    from envoi.extensions import db
    from optin.models import Form

    with app.app_context():
        create_topic("offers", "Special offers")
    page = staff_page
    page.goto(page.url.replace("/admin/", "/admin/forms/new"))
    hosted = page.frame_locator("#form-preview")
    expect(hosted.get_by_text("slug: lower-case letters")).to_be_visible()  # a new form: no slug yet
    page.get_by_label("slug").fill("spring")
    page.get_by_label("Title").fill("Spring letter")
    expect(hosted.get_by_role("heading", name="Spring letter")).to_be_visible()
    page.get_by_label("Consent text").fill("Yes, send me the spring letter.")
    expect(hosted.get_by_text("Yes, send me the spring letter.")).to_be_visible()
    page.locator("input[name=fields][value=city]").check()
    expect(hosted.get_by_label("City")).to_be_visible()
    page.locator("input[name=topics][value=offers]").check()
    expect(page.locator("#preview-summary")).to_contain_text("Special offers")
    expect(page.locator("#popup-preview-box")).to_be_hidden()  # inline: no popup

    # A popup after 0 s: the embed script builds it from the unsaved settings.
    page.locator("select[name=popup_trigger]").select_option("delay")
    page.locator("input[name=popup_delay_seconds]").fill("0")
    expect(page.locator("#popup-preview-box")).to_be_visible()
    popup = page.frame_locator("#popup-preview")
    expect(popup.get_by_text("Yes, send me the spring letter.")).to_be_visible()
    page.get_by_label("Consent text").fill("Changed while the popup is open.")
    expect(popup.get_by_text("Changed while the popup is open.")).to_be_visible()
    expect(hosted.get_by_text("Changed while the popup is open.")).to_be_visible()
    page.screenshot(path=str(_shot_dir() / "form-live-preview.png"), full_page=True)
    # A signup from the live popup stores and sends nothing.
    popup.get_by_label("Email").fill("nobody@example.org")
    popup.get_by_label("Email").press("Enter")  # the dialog is taller than the preview frame
    expect(popup.get_by_text("Preview: nothing was stored or sent.")).to_be_visible()
    # A bad value is named in the preview, not a broken page.
    page.get_by_label("Title").fill("")
    expect(hosted.get_by_text("title: required")).to_be_visible()
    history = page.evaluate("history.length")
    page.get_by_label("Title").fill("Spring letter")
    expect(hosted.get_by_role("heading", name="Spring letter")).to_be_visible()
    assert page.evaluate("history.length") == history  # previews do not fill the back button
    with app.app_context():
        assert db.session.query(Form).count() == 0 and db.session.query(Contact).count() == 0
    page.locator("#save-form").click()
    expect(page.locator(".flash.ok")).to_be_visible()
    with app.app_context():
        form = db.session.query(Form).one()
        assert form.topics == ["offers"] and form.popup["delay_seconds"] == 0
