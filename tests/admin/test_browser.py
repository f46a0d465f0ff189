"""The marketer's journey in a real browser (Debian's chromium through Playwright), on the
embedded default: no SMTP server, no Twilio account, every message in the dev outbox.

Log in, create a form, sign up through the hosted page in a second browser context, confirm from
the dev outbox, import a CSV, build a segment with the builder and see its count, create and send
an email campaign, watch it finish and see its report, open the contact's timeline and see the message
there, then the Analytics page.

A screenshot of each step is kept: in $ENVOI_TEST_SCREENSHOTS if set, else in
test-artifacts/admin-journey/ at the repository root."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.admin.conftest import PASSWORD
from tests.browser import serve_live
from tests.conftest import ROOT


@pytest.fixture
def outbox_server(app):
    """The app live on loopback with the dev outbox (no SMTP, no Twilio) and a worker thread."""
    yield from serve_live(app, SMTP_URL=None, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None)


@pytest.fixture
def shots() -> Path:
    path = Path(os.environ.get("ENVOI_TEST_SCREENSHOTS") or ROOT / "test-artifacts" / "admin-journey")
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.png"):
        old.unlink(missing_ok=True)  # a concurrent run may have removed it
    return path


def test_marketer_journey_from_signup_to_campaign_on_the_dev_outbox(app, outbox_server, chromium, shots, tmp_path):
    from envoi.auth.services import create_user

    with app.app_context():
        create_user("marketer@example.org", "admin", PASSWORD)
    base = outbox_server.url
    staff_ctx = chromium.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    visitor_ctx = chromium.new_context(locale="en-GB")
    page = staff_ctx.new_page()
    page.set_default_timeout(15_000)
    page.on("dialog", lambda dialog: dialog.accept())
    step = iter(range(1, 100))

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{next(step):02d}-{name}.png"), full_page=True)

    try:
        # 1. Log in.
        page.goto(base + "/admin/")
        expect(page).to_have_url(re.compile(r"/admin/login\?next="))
        page.get_by_label("Email").fill("marketer@example.org")
        page.get_by_label("Password").fill(PASSWORD)
        shot("login")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        shot("dashboard")

        # 2. Create a form that collects email, first name and city.
        page.get_by_role("link", name="Forms").click()
        page.get_by_role("link", name="New form").click()
        page.get_by_label("Title").fill("Newsletter")
        page.get_by_label("slug").fill("news")
        page.locator("input[name=fields][value=city]").check()
        page.get_by_label("Consent text").fill("I agree to receive the newsletter.")
        page.locator("#save-form").click()
        expect(page.locator(".flash.ok")).to_be_visible()
        expect(page.locator("#embed-snippet")).to_contain_text("/forms/news/embed.js")
        preview = page.frame_locator("#form-preview")
        expect(preview.get_by_text("I agree to receive the newsletter.")).to_be_visible()
        shot("form")

        # 3. A visitor signs up on the hosted page, in their own browser context.
        visitor = visitor_ctx.new_page()
        visitor.set_default_timeout(15_000)
        visitor.goto(base + "/forms/news")
        visitor.get_by_label("Email").fill("ada@example.org")
        visitor.get_by_label("First name").fill("Ada")
        visitor.get_by_label("City").fill("Lyon")
        visitor.get_by_role("button").click()
        expect(visitor.get_by_role("heading", name=re.compile("Thank"))).to_be_visible()
        visitor.screenshot(path=str(shots / f"{next(step):02d}-visitor-signed-up.png"), full_page=True)

        # 4. The confirmation email is in the dev outbox; its link confirms.
        page.get_by_role("link", name="Outbox").click()
        for _ in range(50):  # the worker sends it just after the signup's commit
            if page.locator("#outbox tr", has_text="ada@example.org").count():
                break
            page.wait_for_timeout(300)
            page.reload()
        page.locator("#outbox tr", has_text="ada@example.org").get_by_role("link").click()
        shot("outbox-confirmation")
        confirm_url = page.locator("ul.links a", has_text="/confirm/").first.get_attribute("href")
        visitor.goto(confirm_url)
        expect(visitor.get_by_role("heading", name=re.compile("confirmed", re.I))).to_be_visible()
        visitor.screenshot(path=str(shots / f"{next(step):02d}-visitor-confirmed.png"), full_page=True)

        # 5. Import a CSV: three more people in Lyon, one bad row.
        csv_file = tmp_path / "people.csv"
        csv_file.write_text("email,first_name,city\nbob@example.org,Bob,Lyon\ncy@example.org,Cy,Lyon\n"
                            "dee@example.org,Dee,Lyon\nnot-an-email,Bad,Paris\n")
        page.get_by_role("link", name="Contacts").click()
        page.get_by_role("link", name="Import CSV").click()
        page.locator("input[type=file]").set_input_files(str(csv_file))
        page.get_by_role("button", name="Upload").click()
        expect(page.locator("#job")).to_have_attribute("data-status", "done", timeout=20_000)
        expect(page.locator("#created")).to_have_text("3")
        expect(page.locator("#rejected")).to_have_text("1")
        shot("import-done")

        # 6. Build a segment with the builder: city is Lyon (4), then also email confirmed (1).
        page.get_by_role("link", name="Segments").click()
        page.get_by_role("link", name="New segment").click()
        page.get_by_label("Name").fill("Lyon newsletter")
        page.get_by_role("button", name="Add condition").click()
        cond = page.locator("#builder .cond").nth(0)
        cond.locator("select.field").select_option("city")
        cond.locator("select.op").select_option("eq")
        cond.locator("input.value").fill("Lyon")
        expect(page.locator("#segment-count")).to_have_text("4")
        page.get_by_role("button", name="Add condition").click()  # email_status eq confirmed
        expect(page.locator("#segment-count")).to_have_text("1")
        expect(page.locator("#segment-sample")).to_contain_text("ada@example.org")
        expect(page.locator("#rules-json")).to_have_value(re.compile(r'"value": "Lyon"'))
        shot("segment-builder")
        page.locator("#save-segment").click()
        expect(page.locator(".flash.ok")).to_be_visible()

        # 7. Create an email campaign for the segment and send it.
        page.get_by_role("link", name="Campaigns").click()
        page.get_by_role("link", name="New campaign (email)").click()
        page.get_by_label("Name").fill("Spring sale")
        page.get_by_label("Segment").select_option(label="Lyon newsletter")
        page.get_by_label("Subject").fill("Hello {{ contact.first_name }}")
        page.get_by_label("HTML body").fill("<p>Hello {{ contact.first_name|default('friend') }}, spring is here.</p>")
        page.get_by_role("button", name="Save").click()
        expect(page.frame_locator("#preview").get_by_text("Hello friend, spring is here.")).to_be_visible()
        shot("campaign-draft")
        page.locator("#send-now").click()
        expect(page.locator("#progress")).to_have_attribute("data-status", "sent", timeout=30_000)
        expect(page.locator("#stat-sent")).to_have_text("1")
        shot("campaign-sent")
        page.reload()  # the report shows once the campaign is finished
        expect(page.locator("#r-delivered")).to_have_text("1")
        shot("campaign-report")

        # 8. The contact's timeline shows the mailing.
        page.get_by_role("link", name="Contacts").click()
        page.get_by_label("Search").fill("ada@")
        page.get_by_role("button", name="Filter").click()
        page.get_by_role("link", name="ada@example.org").click()
        timeline = page.locator("#timeline")
        expect(timeline.locator("li.delivery")).to_contain_text("Spring sale")
        expect(timeline.locator("li.delivery")).to_contain_text("sent")
        expect(timeline).to_contain_text("consent granted")
        shot("contact-timeline")

        # And the message itself is in the outbox, personalised.
        page.get_by_role("link", name="Outbox").click()
        expect(page.locator("#outbox")).to_contain_text("Hello Ada")
        shot("outbox-campaign")

        # 9. The Analytics page: a range, its sections and their charts.
        page.get_by_role("link", name="Analytics").click()
        page.get_by_label("From").fill("2020-01-01")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("#subs-email")).to_have_text("1")
        expect(page.locator("#rfm-grid")).to_be_visible()
        expect(page.locator("#audience svg.chart")).to_be_visible()
        shot("analytics")
    finally:
        staff_ctx.close()
        visitor_ctx.close()
