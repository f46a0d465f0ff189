"""The hit buffer: the public routes push to Redis, the drainer writes message_events in batches.
Every hit is written exactly once (drainers dying mid-batch, two at once), the bot flags and the
refusals are those of the Flask routes, whose answers the fast path gives byte for byte."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from werkzeug.test import EnvironBuilder

from campaigns import tracking
from campaigns.models import ShortLink
from campaigns.reports import campaign_report
from campaigns.tracking_models import SmsLink
from campaigns.tracking_views import TrackingFastPath
from envoi.extensions import db
from envoi.types import utcnow
from segments.models import MessageEvent
from tests.campaigns.dispatch_fixtures import make_campaign, make_contacts
from tests.conftest import ROOT, configured, free_port

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
AGENTS = [(BROWSER, "192.0.2.10", False), ("Mozilla/5.0", "192.0.2.11", True), (BROWSER, "17.58.1.20", True),
          ("Barracuda Sentinel (EE)", "192.0.2.13", True)]


def written() -> list[tuple]:
    db.session.expire_all()
    return sorted(db.session.execute(sa.select(
        MessageEvent.contact_id, MessageEvent.campaign_id, MessageEvent.channel, MessageEvent.kind,
        MessageEvent.is_bot, MessageEvent.data["url"].as_string()).where(MessageEvent.kind != "sent")).all())


def buffered() -> int:
    """Hits waiting for the drainer: pushed from this process's buffer to Redis."""
    tracking.flush_hits()
    return tracking._redis().llen(tracking.HITS)


def test_random_hits_are_written_once_each_after_the_drain_with_their_bot_flags(app, ctx, client):
    rng = random.Random(8)
    ids = make_contacts(12)
    campaign_id = make_campaign()
    before = utcnow() - timedelta(hours=2)
    expected = []
    for _ in range(300):
        contact_id = rng.choice(ids)
        ua, ip, bot = rng.choice(AGENTS)
        if rng.random() < 0.5:
            token = tracking.open_token(campaign_id, contact_id, now=before)
            response = client.get(f"/t/o/{token}.gif", headers={"User-Agent": ua}, environ_base={"REMOTE_ADDR": ip})
            assert response.status_code == 200 and response.data == tracking.PIXEL
            expected.append((contact_id, campaign_id, "email", "opened", bot, None))
        else:
            url = f"https://shop.example.com/p/{rng.randint(1, 5)}"
            token = tracking.click_token(campaign_id, contact_id, url, now=before)
            response = client.get(f"/t/c/{token}", headers={"User-Agent": ua}, environ_base={"REMOTE_ADDR": ip})
            assert response.status_code == 302 and response.headers["Location"] == url
            # Apple's network and the bare user agent mark opens only: a click from there is a person's.
            expected.append((contact_id, campaign_id, "email", "clicked", ua.startswith("Barracuda"), url))
        if rng.random() < 0.1:  # a forged token now and then: refused, nothing buffered
            forged = ("B" if token[0] == "A" else "A") + token[1:]  # another payload, the same signature
            assert client.get(f"/t/c/{forged}").status_code == 404
    assert buffered() == 300 and written() == []
    # Small batches, so that many batches (and their names) are written.
    assert tracking.drain_hits(batch=37) == 300
    assert written() == sorted(expected)
    assert tracking.drain_hits() == 0 and written() == sorted(expected)
    # The report reads the drained events: bots out of the human rates.
    report = campaign_report(campaign_id)
    human_openers = {c for c, _, _, kind, bot, _ in expected if not bot}
    assert report["unique_opens"] == len(human_openers)
    assert report["bot_opens"] == sum(1 for e in expected if e[3] == "opened" and e[4])
    assert report["clicks"] == sum(1 for e in expected if e[3] == "clicked" and not e[4])


def test_a_batch_left_by_a_dead_drainer_is_written_once(app, ctx, client):
    ids = make_contacts(3)
    campaign_id = make_campaign()
    before = utcnow() - timedelta(hours=2)
    for contact_id in ids:
        token = tracking.open_token(campaign_id, contact_id, now=before)
        client.get(f"/t/o/{token}.gif", headers={"User-Agent": BROWSER})
    # Died after taking the batch, before writing it: the next drain writes it.
    tracking.flush_hits()
    key = tracking.take_batch(2)
    assert buffered() == 1 and written() == []
    assert tracking.drain_hits() == 3
    assert len(written()) == 3

    token = tracking.open_token(campaign_id, ids[0], now=before)
    client.get(f"/t/o/{token}.gif", headers={"User-Agent": BROWSER})
    # Died after writing the batch, before dropping its key: the next drain sees its name and skips it.
    tracking.flush_hits()
    key = tracking.take_batch()
    rows = [tracking.json.loads(raw) for raw in tracking._redis().lrange(key, 0, -1)]
    assert tracking._apply_rows(rows, batch=key.rsplit(":", 1)[-1]) is True
    assert len(written()) == 4
    assert tracking.drain_hits() == 1
    assert len(written()) == 4 and tracking._redis().scard(tracking.DRAINING) == 0


def test_two_drainers_at_once_write_every_hit_once(app, ctx, client):
    ids = make_contacts(5)
    campaign_id = make_campaign()
    before = utcnow() - timedelta(hours=2)
    for i in range(400):
        token = tracking.click_token(campaign_id, ids[i % 5], f"https://example.com/{i}", now=before)
        assert client.get(f"/t/c/{token}", headers={"User-Agent": BROWSER}).status_code == 302
    taken = []

    def drain():
        with app.app_context():
            taken.append(tracking.drain_hits(batch=25))
            db.session.remove()

    threads = [threading.Thread(target=drain) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(taken) >= 400
    urls = [e[5] for e in written()]
    assert sorted(urls) == sorted(f"https://example.com/{i}" for i in range(400))


def test_sms_clicks_are_counted_after_the_drain_and_unknown_codes_refused(app, ctx, client):
    (contact_id,) = make_contacts(1, channel="sms")
    campaign_id = make_campaign(channel="sms", body="x")
    code = tracking.short_code(campaign_id, contact_id, "https://shop.example.com/s")
    db.session.add(ShortLink(code=code, campaign_id=campaign_id, contact_id=contact_id,
                             url="https://shop.example.com/s", created_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    for _ in range(3):
        response = client.get(f"/s/{code}", headers={"User-Agent": BROWSER})
        assert response.status_code == 302 and response.headers["Location"] == "https://shop.example.com/s"
    assert client.get("/s/ZZZZZZZZZZ").status_code == 404 and buffered() == 3
    tracking.drain_hits()
    db.session.expire_all()
    link = db.session.get(ShortLink, code)
    assert link.clicks == 3 and link.last_clicked_at is not None
    assert [e[2:5] for e in written()] == [("sms", "clicked", False)] * 3


def test_fast_path_answers_exactly_as_the_flask_routes(app, ctx):
    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign()
    before = utcnow() - timedelta(hours=2)
    code = tracking.short_code(campaign_id, contact_id, "https://shop.example.com/s?q=é")
    db.session.add(ShortLink(code=code, campaign_id=campaign_id, contact_id=contact_id,
                             url="https://shop.example.com/s?q=é", created_at=before))
    db.session.add(SmsLink(campaign_id=campaign_id, position=3, url_hash="-", url="https://shop.example.com/n"))
    signed = tracking.sms_code(campaign_id, contact_id, 3, "https://shop.example.com/n")
    db.session.add(ShortLink(code=signed, campaign_id=campaign_id, contact_id=contact_id,
                             url="https://shop.example.com/n", created_at=before))
    db.session.commit()
    fast = app.wsgi_app
    assert isinstance(fast, TrackingFastPath)
    flask_only = fast.wsgi_app

    def call(wsgi, path, method="GET"):
        environ = EnvironBuilder(path=path, method=method, headers={"User-Agent": BROWSER}).get_environ()
        got = {}

        def start_response(status, headers, exc_info=None):
            got["status"], got["headers"] = status, sorted(headers)

        got["body"] = b"".join(wsgi(environ, start_response))
        return got

    paths = [f"/t/o/{tracking.open_token(campaign_id, contact_id, now=before)}.gif",
             f"/t/c/{tracking.click_token(campaign_id, contact_id, 'https://example.com/a?x=é&y=<1>', now=before)}",
             f"/s/{code}", f"/s/{signed}", "/t/o/forged.gif", "/t/c/forged", "/s/ZZZZZZZZZZ", f"/s/{signed[:-1]}0",
             "/t/c/a/b"]
    for path in paths:
        assert call(fast, path) == call(flask_only, path), path
        assert call(fast, path, "HEAD") == call(flask_only, path, "HEAD"), path
    answers = [call(fast, p)["status"] for p in paths]
    assert answers == ["200 OK", "302 FOUND", "302 FOUND", "302 FOUND", "200 OK", "404 NOT FOUND", "404 NOT FOUND",
                       "404 NOT FOUND", "404 NOT FOUND"]
    # Each good hit was buffered once per call (fast and Flask alike, GET and HEAD): 4 x 5.
    assert buffered() == 20


def test_without_redis_a_hit_is_written_directly(app, ctx, client):
    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign()
    token = tracking.open_token(campaign_id, contact_id, now=utcnow() - timedelta(hours=2))
    with configured(app, REDIS_URL="redis://127.0.0.1:1/0"):
        assert client.get(f"/t/o/{token}.gif", headers={"User-Agent": BROWSER}).status_code == 200
        # The buffer's thread pushes within ENVOI_TRACKING_FLUSH_MS; Redis refuses; it writes the event.
        assert until(lambda: written() != [], 10)
    assert written() == [(contact_id, campaign_id, "email", "opened", False, None)]


def until(test, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_buffer_pushes_hits_to_redis_by_itself_and_in_one_go(app, ctx, client):
    ids = make_contacts(3)
    campaign_id = make_campaign()
    redis = tracking._redis()
    for contact_id in ids:
        token = tracking.open_token(campaign_id, contact_id, now=utcnow() - timedelta(hours=2))
        assert client.get(f"/t/o/{token}.gif", headers={"User-Agent": BROWSER}).status_code == 200
    # No drain, no explicit flush: the thread pushes them within ENVOI_TRACKING_FLUSH_MS (50 ms).
    assert until(lambda: redis.llen(tracking.HITS) == 3, 5)
    assert tracking.drain_hits() == 3 and len(written()) == 3


def test_a_stopped_gunicorn_worker_pushes_the_hits_it_holds(app, ctx, tmp_path):
    """The deployment's web server: hits held in a worker (a flush period of an hour) reach Redis
    when gunicorn stops (SIGTERM), through the buffer's atexit push."""
    ids = make_contacts(4)
    campaign_id = make_campaign()
    redis = tracking._redis()
    port = free_port()
    env = {**os.environ, "ENVOI_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "ENVOI_REDIS_URL": app.config["REDIS_URL"], "ENVOI_SECRET_KEY": app.config["SECRET_KEY"],
           "ENVOI_BASE_URL": f"http://127.0.0.1:{port}", "ENVOI_INSTANCE_PATH": str(tmp_path),
           "ENVOI_TRACKING_FLUSH_MS": "3600000"}
    server = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "wsgi:app", "--bind",
                               f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "gthread", "--threads", "4",
                               "--no-control-socket"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert until(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, 30)
        for contact_id in ids:
            token = tracking.open_token(campaign_id, contact_id, now=utcnow() - timedelta(hours=2))
            assert _get(f"http://127.0.0.1:{port}/t/o/{token}.gif") == 200
        time.sleep(0.3)
        assert redis.llen(tracking.HITS) == 0  # held in the workers
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert redis.llen(tracking.HITS) == 4
    assert tracking.drain_hits() == 4
    assert sorted(w[0] for w in written()) == sorted(ids)


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": BROWSER}), timeout=5) as r:
            return r.status
    except OSError:
        return None


def test_the_periodic_drainer_is_declared_and_drains(app, ctx, client):
    import workers
    from workers.tracking import drain_tracking_hits

    assert drain_tracking_hits.actor_name in workers.broker.actors
    (contact_id,) = make_contacts(1)
    campaign_id = make_campaign()
    token = tracking.open_token(campaign_id, contact_id, now=utcnow() - timedelta(hours=2))
    client.get(f"/t/o/{token}.gif", headers={"User-Agent": BROWSER})
    assert tracking.drain_for(0) == 1 and len(written()) == 1


def test_admin_and_api_reports_see_drained_hits(app, ctx, client, viewer_api):
    ids = make_contacts(3)
    before = utcnow() - timedelta(hours=2)
    campaign_id = make_campaign(started_at=before - timedelta(minutes=5))
    for contact_id in ids[:2]:
        token = tracking.open_token(campaign_id, contact_id, now=before)
        client.get(f"/t/o/{token}.gif", headers={"User-Agent": BROWSER})
    token = tracking.click_token(campaign_id, ids[2], "https://example.com/x", now=before)
    client.get(f"/t/c/{token}", headers={"User-Agent": BROWSER})
    assert viewer_api.get(f"/api/v1/campaigns/{campaign_id}/report").json["unique_opens"] == 0
    tracking.drain_hits()
    report = viewer_api.get(f"/api/v1/campaigns/{campaign_id}/report").json
    assert (report["unique_opens"], report["unique_clicks"], report["opens"], report["clicks"]) == (3, 1, 2, 1)
    overview = viewer_api.get("/api/v1/analytics/campaigns").json
    assert [(c["id"], c["unique_opens"], c["unique_clicks"]) for c in overview["items"]] == [(campaign_id, 3, 1)]
