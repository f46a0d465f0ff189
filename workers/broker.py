"""Broker setup: Redis (ENVOI_REDIS_URL) in every process; a StubBroker only in unit tests."""
from __future__ import annotations

import os
import threading

import dramatiq
from dramatiq.middleware import Middleware


class AppContext(Middleware):
    """Runs every message inside a Flask app context, so actors can use the database."""

    def __init__(self):
        self._app = None
        self._lock = threading.Lock()  # worker threads take their first messages at once

    @property
    def app(self):
        if self._app is None:
            from flask import current_app, has_app_context

            if has_app_context():
                return current_app._get_current_object()
            with self._lock:
                if self._app is None:
                    from envoi import create_app

                    self._app = create_app()
        return self._app

    def before_process_message(self, broker, message):
        ctx = self.app.app_context()
        ctx.push()
        message.options["_envoi_ctx"] = ctx

    def _pop(self, message):
        ctx = message.options.pop("_envoi_ctx", None)
        if ctx is not None:
            from envoi.extensions import db

            db.session.remove()
            ctx.pop()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._pop(message)

    def after_skip_message(self, broker, message):
        self._pop(message)


def setup_broker():
    """Create and install the broker; called once, before any actor is declared."""
    if os.environ.get("ENVOI_BROKER") == "stub":
        from dramatiq.brokers.stub import StubBroker

        broker = StubBroker()
        broker.emit_after("process_boot")
    else:
        from dramatiq.brokers.redis import RedisBroker

        from envoi.config import ConfigError, load_config

        try:
            url = load_config()["REDIS_URL"]
        except ConfigError as err:
            raise SystemExit(f"envoi: configuration error: {err}") from None
        broker = RedisBroker(url=url)
    broker.add_middleware(AppContext())
    from periodiq import PeriodiqMiddleware

    broker.add_middleware(PeriodiqMiddleware(skip_delay=30))
    dramatiq.set_broker(broker)
    return broker


def app_context_middleware(broker) -> AppContext:
    return next(m for m in broker.middleware if isinstance(m, AppContext))
