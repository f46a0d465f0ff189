"""The embeddable popup in a real browser (Debian's chromium through Playwright).

The app runs live on one loopback origin; a third-party site on another origin embeds the form
with one script tag. Timers and Date are driven by Playwright's page clock, so the delay and
the frequency cap are checked without waiting for them."""
from __future__ import annotations

import re
import time

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from tests.browser import *  # noqa: F401,F403  (fixtures: live_server, host_site, chromium, browser_page)

DAY_MS = 86_400_000


def make_form(api, slug: str, site, **popup) -> dict:
    body = {
        "slug": slug, "title": f"News from {slug}", "fields": ["email", "first_name"], "channels": ["email"],
        "double_opt_in": True, "consent_text": "I agree to receive the newsletter.",
        "allowed_origins": [site.origin],
        "popup": {"trigger": "delay", "delay_seconds": 0, "scroll_percent": 50, "frequency_days": 7, **popup},
    }
    resp = api.post("/api/v1/forms", json=body)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def host_page(site, live, slug: str, *, head: str = "", body: str = "", path: str | None = None) -> str:
    return site.add(path or f"/{slug}.html", f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A shop</title>{head}</head>
<body><h1>A shop that sells things</h1>{body}
<script src="{live.url}/forms/{slug}/embed.js" async></script></body></html>""")


def state_of(page, slug: str):
    """The script tag carries where the script stands (waiting, open, closed, capped ...)."""
    return page.locator(f'script[src$="/forms/{slug}/embed.js"]')


def popup(page, slug: str):
    return page.locator(f'envoi-form[data-envoi-slug="{slug}"]')


def next_frame(page) -> None:
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


@pytest.fixture
def person_page(chromium):
    """A page whose browser names itself as a person's does: headless chromium's user agent says
    HeadlessChrome, and form views are not counted for a headless browser."""
    ua = (f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chromium.version} "
          "Safari/537.36")
    context = chromium.new_context(locale="en-GB", user_agent=ua)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def views_of(app, slug: str, source: str, expected: int) -> int:
    """The form's views from `source`, once they reach `expected` (the beacon is sent asynchronously)
    or after 5 s."""
    from envoi.extensions import db
    from optin.models import Form, FormView

    deadline = time.monotonic() + 5
    while True:
        with app.app_context():
            n = db.session.scalar(sa.select(sa.func.coalesce(sa.func.sum(FormView.views), 0))
                                  .join(Form, Form.id == FormView.form_id)
                                  .where(Form.slug == slug, FormView.source == source))
            db.session.remove()
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def test_delay_popup_is_an_accessible_dialog_capped_for_frequency_days_after_a_close(
        api, app, live_server, host_site, person_page):
    page = person_page
    make_form(api, "delayed", host_site, trigger="delay", delay_seconds=5, frequency_days=7)
    url = host_page(host_site, live_server, "delayed", body="<button id='outside'>Buy</button>")
    page.clock.install()
    page.goto(url)
    page.locator("#outside").focus()
    expect(state_of(page, "delayed")).to_have_attribute("data-envoi-state", "waiting")
    page.clock.run_for(4_000)
    next_frame(page)
    expect(state_of(page, "delayed")).to_have_attribute("data-envoi-state", "waiting")
    assert views_of(app, "delayed", "popup", 0) == 0  # loaded and waiting: not a view yet
    page.clock.run_for(1_500)
    dialog = page.get_by_role("dialog", name="News from delayed")
    expect(dialog).to_be_visible()
    expect(state_of(page, "delayed")).to_have_attribute("data-envoi-state", "open")
    assert views_of(app, "delayed", "popup", 1) == 1  # shown: one view
    # Labelled inputs, focus inside the dialog, a named close button.
    expect(dialog.get_by_label("Email")).to_be_focused()
    expect(dialog.get_by_label("First name")).to_be_visible()
    expect(dialog.get_by_role("button", name="Close")).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(state_of(page, "delayed")).to_have_attribute("data-envoi-state", "closed")
    expect(page.locator("#outside")).to_be_focused()  # focus goes back where it was

    # Closed: not again on reload, however long the visitor stays.
    page.reload()
    expect(state_of(page, "delayed")).to_have_attribute("data-envoi-state", "capped")
    page.clock.run_for(60_000)
    expect(popup(page, "delayed")).to_have_count(0)

    # Six days later: still capped; eight days later (frequency_days=7): back.
    def closed_days_ago(days):
        page.evaluate("""([key, ms]) => {
            const s = JSON.parse(localStorage.getItem(key)); s.closed_at = Date.now() - ms;
            localStorage.setItem(key, JSON.stringify(s)); }""", ["envoi:delayed", days * DAY_MS])
        page.reload()

    closed_days_ago(6)
    expect(state_of(page, "delayed")).to_have_attribute("data-envoi-state", "capped")
    closed_days_ago(8)
    expect(state_of(page, "delayed")).to_have_attribute("data-envoi-state", "waiting")
    page.clock.run_for(5_500)
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    expect(state_of(page, "delayed")).to_have_attribute("data-envoi-state", "closed")
    # Four page loads, the popup shown in two: two views (the capped loads counted none).
    assert views_of(app, "delayed", "popup", 2) == 2


def test_exit_intent_and_scroll_depth_open_their_popups(api, live_server, host_site, browser_page):
    page = browser_page
    make_form(api, "leaving", host_site, trigger="exit")
    make_form(api, "reader", host_site, trigger="scroll", scroll_percent=50)

    page.goto(host_page(host_site, live_server, "leaving"))
    expect(state_of(page, "leaving")).to_have_attribute("data-envoi-state", "waiting")
    page.mouse.move(300, 300)
    page.mouse.move(600, 50, steps=4)  # moving around inside the page is not an exit
    next_frame(page)
    expect(state_of(page, "leaving")).to_have_attribute("data-envoi-state", "waiting")
    page.mouse.move(600, -20, steps=4)  # out through the top edge, towards the tabs
    expect(page.get_by_role("dialog", name="News from leaving")).to_be_visible()

    page.goto(host_page(host_site, live_server, "reader", body="<div style='height:5000px'>long read</div>"))
    expect(state_of(page, "reader")).to_have_attribute("data-envoi-state", "waiting")
    scroll_to = "f => window.scrollTo(0, (document.documentElement.scrollHeight - innerHeight) * f)"
    page.evaluate(scroll_to, 0.3)
    next_frame(page)
    expect(state_of(page, "reader")).to_have_attribute("data-envoi-state", "waiting")
    page.evaluate(scroll_to, 0.6)
    expect(page.get_by_role("dialog", name="News from reader")).to_be_visible()


HOSTILE = """<style>
* { color: red !important; font-size: 40px !important; font-family: serif !important; }
input { border: 6px solid lime !important; padding: 30px !important; }
dialog, .panel { border: 0; background: transparent; }
</style>"""


def test_host_page_styles_do_not_reach_the_popup_and_ours_do_not_leak(
        api, live_server, host_site, browser_page, artifacts_dir):
    page = browser_page
    make_form(api, "styled", host_site, trigger="delay", delay_seconds=0)
    props = ["color", "fontSize", "fontFamily", "borderTopWidth", "borderTopColor", "paddingTop", "width"]
    read = """([slug, props]) => {
        const input = document.querySelector(`envoi-form[data-envoi-slug="${slug}"]`)
          .shadowRoot.querySelector('input[name=email]');
        const cs = getComputedStyle(input); return Object.fromEntries(props.map(p => [p, cs[p]])); }"""

    page.goto(host_page(host_site, live_server, "styled", path="/plain.html"))
    expect(page.get_by_role("dialog")).to_be_visible()
    plain = page.evaluate(read, ["styled", props])

    page.goto(host_page(host_site, live_server, "styled", path="/hostile.html", head=HOSTILE,
                        body="<div class='panel' id='theirs'>their panel</div><h2 id='their-title'>Theirs</h2>"))
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    hostile = page.evaluate(read, ["styled", props])
    assert hostile == plain
    assert hostile["fontSize"] == "16px" and hostile["color"] != "rgb(255, 0, 0)"
    assert hostile["borderTopWidth"] == "1px"
    # Our .panel and h2 rules stay in the shadow tree: the host's own elements keep theirs.
    theirs = page.evaluate("""() => { const p = getComputedStyle(document.getElementById('theirs'));
        const h = getComputedStyle(document.getElementById('their-title'));
        return [p.borderTopWidth, p.backgroundColor, p.paddingTop, h.fontSize, h.fontWeight]; }""")
    assert theirs[:3] == ["0px", "rgba(0, 0, 0, 0)", "0px"]
    assert theirs[3] == "40px"
    page.screenshot(path=str(artifacts_dir / "embed-popup.png"))
    dialog.screenshot(path=str(artifacts_dir / "embed-popup-dialog.png"))


def test_inline_form_goes_in_its_placeholder(api, app, live_server, host_site, person_page):
    page = person_page
    make_form(api, "inline", host_site, trigger="inline")
    page.goto(host_page(host_site, live_server, "inline",
                        body="<main><p>Before</p><div id='slot' data-envoi-form='inline'></div><p>After</p></main>"))
    expect(state_of(page, "inline")).to_have_attribute("data-envoi-state", "inline")
    expect(page.locator("#slot envoi-form input[name=email]")).to_be_visible()
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert views_of(app, "inline", "inline", 1) == 1


def test_signup_from_the_popup_then_the_emailed_link_confirms(
        api, app, live_server, host_site, browser_page, smtp_server):
    from contacts.models import Contact
    from envoi.extensions import db

    page = browser_page
    make_form(api, "signup", host_site, trigger="delay", delay_seconds=0)
    url = host_page(host_site, live_server, "signup")
    page.goto(url)
    dialog = page.get_by_role("dialog", name="News from signup")
    expect(dialog).to_be_visible()

    # A 422 from the server shows next to its field.
    email = dialog.get_by_label("Email")
    email.fill("not-an-address")
    dialog.locator("button[type=submit]").click()
    expect(email).to_have_attribute("aria-invalid", "true")
    error = page.locator('envoi-form [id$="-email-error"]')
    expect(error).to_be_visible()
    expect(error).not_to_have_text("")

    email.fill("ada.lovelace@example.org")
    dialog.get_by_label("First name").fill("Ada")
    dialog.locator("button[type=submit]").click()
    expect(dialog.locator(".success")).to_be_visible()
    expect(dialog.locator(".success")).not_to_have_text("")
    expect(state_of(page, "signup")).to_have_attribute("data-envoi-state", "signed-up")

    (message,) = [m["message"] for m in smtp_server.wait_for(1)]
    assert message["To"].addresses[0].addr_spec == "ada.lovelace@example.org"
    text = message.get_body(preferencelist=("plain", "html")).get_content()
    link = re.search(re.escape(live_server.url) + r"/confirm/[^\s\"'<>]+", text).group(0)
    with app.app_context():
        assert db.session.scalar(sa.select(Contact.email_status)) == "pending"

    page.goto(link)  # the landing page confirms through an auto-submitted POST
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        with app.app_context():
            status = db.session.scalar(
                sa.select(Contact.email_status).where(Contact.email == "ada.lovelace@example.org"))
            db.session.remove()
        if status == "confirmed":
            break
        time.sleep(0.1)
    assert status == "confirmed"

    # Never again after a signup.
    page.goto(url)
    expect(state_of(page, "signup")).to_have_attribute("data-envoi-state", "signed-up")
    expect(popup(page, "signup")).to_have_count(0)


def test_the_admin_popup_preview_is_no_view_of_the_form(api, app, live_server, host_site, person_page):
    from envoi.auth.services import create_user
    from tests.admin.conftest import PASSWORD

    page = person_page
    form = make_form(api, "previewed", host_site, trigger="delay", delay_seconds=0)
    with app.app_context():
        create_user("marketer@example.org", "marketer", PASSWORD)
    page.goto(live_server.url + "/admin/login")
    page.get_by_label("Email").fill("marketer@example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    page.goto(f"{live_server.url}/admin/forms/{form['id']}/popup-preview")  # the saved form's real embed script
    expect(page.get_by_role("dialog", name="News from previewed")).to_be_visible()
    # Then a visitor of the site sees it: that one is counted, and it is the only one.
    page.goto(host_page(host_site, live_server, "previewed"))
    expect(page.get_by_role("dialog", name="News from previewed")).to_be_visible()
    assert views_of(app, "previewed", "popup", 1) == 1
    next_frame(page)
    assert views_of(app, "previewed", "popup", 1) == 1
