"""Form views: the hosted page and the embed script's beacon (POST /forms/<slug>/views) count one
view each, per UTC day and source, in one counter row; never for a machine, another site, or
beyond the per-IP rate."""
from __future__ import annotations

import threading
from datetime import date

import pytest
import sqlalchemy as sa

from envoi.errors import ValidationError
from envoi.extensions import db
from envoi.types import utcnow
from optin import services
from optin.models import FormView
from tests.conftest import configured

SITE = "https://shop.example.com"
BROWSER = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/130.0.0.0 Safari/537.36")
MACHINES = ["", "curl/8.5.0", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "facebookexternalhit/1.1", "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/130.0.0.0 Safari/537.36"]


@pytest.fixture
def form(make_form):
    return make_form(allowed_origins=[SITE], popup={"trigger": "delay", "delay_seconds": 3})


def counts(app) -> dict:
    """(source, day) -> views, over every form."""
    with app.app_context():
        rows = db.session.execute(sa.select(FormView.source, FormView.day, FormView.views)).all()
        db.session.remove()
    return {(source, day): views for source, day, views in rows}


def total(app) -> int:
    return sum(counts(app).values())


def beacon(client, source="popup", origin=SITE, ua=BROWSER, slug="news"):
    headers = {"User-Agent": ua}
    if origin is not None:
        headers["Origin"] = origin
    return client.post(f"/forms/{slug}/views", data={"source": source} if source is not None else {},
                       headers=headers)


def test_the_hosted_page_counts_one_view_each_time_a_person_is_shown_it(app, client, form):
    today = utcnow().date()
    for _ in range(2):
        page = client.get("/forms/news", headers={"User-Agent": BROWSER})
        assert page.status_code == 200 and page.mimetype == "text/html"
    assert counts(app) == {("hosted", today): 2}
    # What the embed script fetches (the form as JSON) is not a view: it counts one when it shows the form.
    assert client.get("/forms/news", headers={"User-Agent": BROWSER, "Accept": "application/json"}).status_code == 200
    assert client.head("/forms/news", headers={"User-Agent": BROWSER}).status_code == 200
    # Machines and speculative prefetches are served the page, not counted.
    for ua in MACHINES:
        assert client.get("/forms/news", headers={"User-Agent": ua}).status_code == 200
    assert client.get("/forms/news", headers={"User-Agent": BROWSER, "Sec-Purpose": "prefetch"}).status_code == 200
    assert client.get("/forms/news", headers={"User-Agent": BROWSER, "Purpose": "prefetch"}).status_code == 200
    assert counts(app) == {("hosted", today): 2}
    assert client.get("/forms/nope", headers={"User-Agent": BROWSER}).status_code == 404


def test_the_hosted_page_view_is_one_statement(app, client, form):
    """The same page for a machine and for a person: the person's costs exactly one INSERT more
    (the counter's upsert); nothing else changes."""
    with app.app_context():
        engine = db.engine

    def statements(ua):
        seen: list[str] = []

        def count(conn, cursor, statement, *args):
            seen.append(statement.split(None, 1)[0].upper())

        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            assert client.get("/forms/news", headers={"User-Agent": ua}).status_code == 200
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        return seen

    machine, person = statements("curl/8.5.0"), statements(BROWSER)
    assert person == [*machine, "INSERT"], (machine, person)
    assert total(app) == 1


def test_a_beacon_from_an_allowed_origin_counts_with_its_source(app, client, form):
    today = utcnow().date()
    popup = beacon(client, "popup")
    assert popup.status_code == 204 and popup.get_data() == b""
    assert popup.headers.get("Access-Control-Allow-Origin") == SITE  # the page's fetch sees no CORS error
    assert "Set-Cookie" not in popup.headers
    assert beacon(client, "popup").status_code == 204
    assert beacon(client, "inline").status_code == 204
    assert counts(app) == {("popup", today): 2, ("inline", today): 1}


def test_a_beacon_from_another_origin_or_without_one_is_refused_and_not_counted(app, client, form):
    for origin in ("https://evil.example.net", "null", None):
        refused = beacon(client, origin=origin)
        assert refused.status_code == 403, origin
        assert refused.get_json()["fields"] == {"Origin": "not allowed"}
        assert "Access-Control-Allow-Origin" not in refused.headers
    # Our own origin (the admin's preview) is allowed.
    assert beacon(client, origin="http://localhost").status_code == 204
    assert total(app) == 1


def test_a_beacon_from_a_machine_is_answered_but_not_counted(app, client, form):
    for ua in MACHINES:
        assert beacon(client, ua=ua).status_code == 204, ua
    assert total(app) == 0


@pytest.mark.parametrize("source", [None, "", "hosted", "banner"])
def test_a_beacon_names_how_the_form_was_shown(app, client, form, source):
    bad = client.post("/forms/news/views", data={} if source is None else {"source": source},
                      headers={"Origin": SITE, "User-Agent": BROWSER, "Accept": "application/json"})
    assert bad.status_code == 422
    assert list(bad.get_json()["fields"]) == ["source"]
    assert total(app) == 0


def test_a_beacon_for_an_unknown_form_is_a_404(app, client, form):
    assert beacon(client, slug="nope").status_code == 404
    assert beacon(client, slug="Not A Slug").status_code == 404


def test_beacons_are_rate_limited_per_ip(app, client, form):
    with configured(app, FORM_VIEW_RATE_PER_IP="3/minute"):
        codes = [beacon(client).status_code for _ in range(5)]
        other_ip = client.post("/forms/news/views", data={"source": "popup"},
                               headers={"Origin": SITE, "User-Agent": BROWSER},
                               environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert codes == [204, 204, 204, 429, 429]
    assert other_ip.status_code == 204
    assert total(app) == 4


def test_views_are_counted_per_day_and_go_with_their_form(app, make_form):
    one, two = make_form(slug="one")["id"], make_form(slug="two")["id"]
    with app.app_context():
        for day, form_id, source in [(date(2026, 1, 1), one, "hosted"), (date(2026, 1, 1), one, "hosted"),
                                     (date(2026, 1, 2), one, "hosted"), (date(2026, 1, 1), one, "popup"),
                                     (date(2026, 1, 1), two, "hosted")]:
            services.record_view(form_id, source, day)
        with pytest.raises(ValidationError) as err:
            services.record_view(one, "banner")
        assert err.value.fields == {"source": "expected one of hosted, inline, popup"}
        rows = db.session.execute(sa.select(FormView.form_id, FormView.day, FormView.source, FormView.views)
                                  .order_by(FormView.form_id, FormView.day, FormView.source)).all()
        assert [tuple(r) for r in rows] == [(one, date(2026, 1, 1), "hosted", 2), (one, date(2026, 1, 1), "popup", 1),
                                            (one, date(2026, 1, 2), "hosted", 1), (two, date(2026, 1, 1), "hosted", 1)]
        services.delete_form(one)
        assert db.session.scalars(sa.select(FormView.form_id).distinct()).all() == [two]


def test_concurrent_views_of_the_same_form_and_day_all_count(app, form):
    """The upsert increments the one counter row: no view lost, no duplicate-key error."""
    threads, per_thread = 4, 10
    errors: list = []

    def run():
        try:
            with app.app_context():
                for _ in range(per_thread):
                    services.record_view(form["id"], "inline", date(2026, 3, 1))
                db.session.remove()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
    assert counts(app) == {("inline", date(2026, 3, 1)): threads * per_thread}
