"""Opt-in fixtures: forms, a worker on the StubBroker, clean rate-limit counters per test."""
from __future__ import annotations

import re
import time

import dramatiq
import pytest

from envoi.extensions import limiter
from workers import broker
from workers.broker import app_context_middleware


@pytest.fixture(autouse=True)
def _fresh_limits(app):
    """Rate-limit counters live in Redis: every test starts with none. The tables are emptied by
    plain SQL between tests (no form commit to drop the cached forms): start with none either."""
    with app.app_context():
        limiter.reset()
    app.extensions.pop("envoi_form_cache", None)
    broker.flush_all()
    yield


@pytest.fixture
def worker(app):
    app_context_middleware(broker)._app = app
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    yield worker
    worker.stop()


def drain(worker) -> None:
    broker.join("optin", fail_fast=True)
    worker.join()


@pytest.fixture
def make_form(app):
    def make(**overrides):
        from optin import services

        data = {"slug": "news", "title": "La lettre", "fields": ["email", "first_name"], "channels": ["email"],
                "consent_text": "I agree to receive the newsletter.", "consent_version": "v1"}
        data.update(overrides)
        with app.app_context():
            form = services.create_form(data)
            return {"id": form.id, "slug": form.slug}

    return make


def old_token(app, form_id: int, age: float = 60.0) -> str:
    """A form start token issued `age` seconds ago (past the minimum fill time)."""
    from optin.views import start_token

    with app.test_request_context():
        return start_token(form_id, time.time() - age)


def signup(client, app, form: dict, data: dict, *, json: bool = True, headers: dict | None = None, **kwargs):
    """POST a signup as the embed script does (JSON answer) or as the hosted page does."""
    body = {"_token": old_token(app, form["id"]), **data}
    hdrs = {"Accept": "application/json"} if json else {}
    hdrs.update(headers or {})
    if json:
        return client.post(f"/forms/{form['slug']}", json=body, headers=hdrs, **kwargs)
    return client.post(f"/forms/{form['slug']}", data=body, headers=hdrs, **kwargs)


def link_in(message, path: str) -> str:
    """The first absolute link to `path` in a received message (text part)."""
    part = message.get_body(("plain",))
    text = part.get_content()
    match = re.search(r"https?://\S+" + re.escape(path) + r"[^\s<>\"]+", text)
    assert match, text
    return match.group(0)
