"""Admin UI fixtures: staff users per role and a logged-in test client that sends the CSRF token."""
from __future__ import annotations

import re

import pytest

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="_csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF field in the page"
    return match.group(1)


class Staff:
    """A test client logged in as one staff user; `post` adds the session's CSRF token."""

    def __init__(self, client, email: str):
        self.client = client
        self.email = email
        page = client.get("/admin/login")
        resp = client.post("/admin/login", data={"email": email, "password": PASSWORD,
                                                 "_csrf": csrf_of(page.get_data(as_text=True))})
        assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
        self.csrf = csrf_of(client.get("/admin/segments").get_data(as_text=True))

    def get(self, path, **kwargs):
        return self.client.get(path, **kwargs)

    def post(self, path, data=None, **kwargs):
        data = dict(data or {})
        data.setdefault("_csrf", self.csrf)
        return self.client.post(path, data=data, **kwargs)

    def post_json(self, path, body):
        return self.client.post(path, json=body, headers={"X-CSRF-Token": self.csrf})


def make_staff(app, role: str, email: str | None = None) -> Staff:
    from envoi.auth.services import create_user

    email = email or f"{role}@example.org"
    with app.app_context():
        create_user(email, role, PASSWORD)
    return Staff(app.test_client(), email)


@pytest.fixture
def admin(app):
    return make_staff(app, "admin")


@pytest.fixture
def marketer(app):
    return make_staff(app, "marketer")


@pytest.fixture
def viewer(app):
    return make_staff(app, "viewer")


@pytest.fixture(autouse=True)
def _reset_redis_state(app):
    """Failed logins and cached dashboard figures of one test must not reach the next (both in Redis)."""
    from envoi.extensions import limiter

    with app.app_context():
        limiter.reset()
    import redis

    client = redis.Redis.from_url(app.config["REDIS_URL"])
    for key in client.scan_iter("envoi:admin:*"):  # cached figures (ids restart in every test)
        client.delete(key)
    yield


class _Worker:
    def __init__(self, broker):
        self.broker = broker

    def join(self, queue: str) -> None:
        self.broker.join(queue, fail_fast=True, timeout=30_000)

    def join_all(self) -> None:
        for queue in sorted(self.broker.get_declared_queues()):
            self.join(queue)


@pytest.fixture
def worker(app):
    """A Dramatiq worker thread on the StubBroker; `worker.join_all()` waits for queued actors."""
    import dramatiq

    from workers import broker
    from workers.broker import app_context_middleware

    app_context_middleware(broker)._app = app
    broker.flush_all()
    thread = dramatiq.Worker(broker, worker_timeout=100)
    thread.start()
    yield _Worker(broker)
    thread.stop()
    broker.flush_all()
