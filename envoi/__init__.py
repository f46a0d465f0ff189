"""Envoi application shell: create_app wires config, extensions, blueprints and the CLI."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.sessions import SecureCookieSessionInterface

from envoi.config import ConfigError, load_config

__all__ = ["create_app", "MAX_ID"]

MAX_ID = 2**63 - 1


def create_app(overrides: dict | None = None) -> Flask:
    """Build the app from the environment; `overrides` (tests) win over it."""
    try:
        cfg = load_config()
    except ConfigError as err:
        # One clear line, no traceback: SystemExit prints its message and exits 1.
        raise SystemExit(f"envoi: configuration error: {err}") from None
    if overrides:
        cfg.update(overrides)
    app = Flask(__name__, instance_path=cfg["INSTANCE_PATH"], template_folder="../templates")
    app.config.update(
        API_TITLE="Envoi API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=512 * 1024 * 1024,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(cfg["SQLALCHEMY_DATABASE_URI"]),
    )
    app.config.update(cfg)
    from werkzeug.routing import IntegerConverter

    class IdConverter(IntegerConverter):
        """Row ids: positive 64-bit integers; anything larger is a 404, not an overflow."""

        def __init__(self, map):
            super().__init__(map, min=1, max=MAX_ID)

    app.url_map.converters["id"] = IdConverter
    app.session_interface = _CookieSessions()
    app.json.sort_keys = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # The Twilio client logs every request and response at INFO: one line per SMS is noise.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

    from envoi.extensions import api, db, limiter, migrate

    db.init_app(app)
    limiter.init_app(app)
    migrate.init_app(app, db, directory=str(_root() / "migrations"))
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        _tune_sqlite(app, db)
    elif not app.config["SQLALCHEMY_ENGINE_OPTIONS"].get("pool_pre_ping"):
        _ping_idle_connections(app, db)

    from envoi.errors import register_error_handlers

    api.init_app(app)
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    _register_blueprints(app, api)
    register_error_handlers(app)  # after Api, so our JSON shape wins over flask-smorest's
    from envoi.errors import refuse_nul_bytes

    app.before_request(refuse_nul_bytes)

    from envoi.cli import register_cli

    register_cli(app)

    @app.get("/healthz")
    def healthz():
        from sqlalchemy import text

        db.session.execute(text("SELECT 1"))
        return jsonify({"status": "ok"})

    return app


class _CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without building a signing serializer for a request that
    carries no session cookie (most public requests: signups, tracking, the API)."""

    def open_session(self, app, request):
        if not app.secret_key:
            return None
        if not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def _engine_options(url: str) -> dict:
    if url.startswith("sqlite"):
        # Writers queue instead of failing with "database is locked".
        return {"connect_args": {"timeout": 30}}
    # No pool_pre_ping (a ping is two round trips, BEGIN + SELECT 1, on every request): a connection
    # idle longer than PING_IDLE_SECONDS is pinged at checkout instead (_ping_idle_connections).
    return {"pool_size": 10, "max_overflow": 20}


PING_IDLE_SECONDS = 10.0


def _ping_idle_connections(app: Flask, db) -> None:
    """Pessimistic disconnect handling where it is needed: a pooled connection back within
    PING_IDLE_SECONDS (a busy server) is used as is; one idle longer (the database may have
    restarted meanwhile) is pinged first and replaced if dead. A connection that dies while in
    use fails its request and SQLAlchemy drops the whole pool."""
    import time

    from sqlalchemy import event, exc

    with app.app_context():
        engine = db.engine
    errors = engine.dialect.loaded_dbapi.Error

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record):
        record.info["envoi_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy):
        since = record.info.get("envoi_idle_since")
        if since is not None and time.monotonic() - since < PING_IDLE_SECONDS:
            return
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SELECT 1")
            dbapi_conn.rollback()  # leave no transaction open (a caller may want autocommit)
        except errors as err:
            raise exc.DisconnectionError(str(err)) from err
        finally:
            cursor.close()


def _tune_sqlite(app: Flask, db) -> None:
    from sqlalchemy import event

    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def _register_blueprints(app: Flask, api) -> None:
    from contacts.api import blp as contacts_blp
    from contacts.api import attributes_blp, purchases_blp, topics_blp
    from contacts.imports_api import imports_blp
    from segments.api import blp as segments_blp

    for blp in (contacts_blp, purchases_blp, topics_blp, attributes_blp, imports_blp, segments_blp):
        api.register_blueprint(blp, url_prefix="/api/v1" + blp.url_prefix)
    import campaigns
    import optin

    optin.register(app, api)
    campaigns.register(app, api)
    import automation
    from envoi import admin

    automation.register(app, api)
    admin.register(app)
