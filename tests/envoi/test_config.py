"""Configuration: bad values stop start-up with one line naming the variable."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from envoi.config import ConfigError, load_config
from tests.conftest import ROOT


def _env(tmp_path, **values) -> dict:
    return {"ENVOI_INSTANCE_PATH": str(tmp_path), **values}


@pytest.mark.parametrize("name, value", [
    ("ENVOI_DATABASE_URL", "not a url"),
    ("ENVOI_DATABASE_URL", "mysql://root@localhost/envoi"),
    ("ENVOI_SMTP_URL", "http://mail.example.org"),
    ("ENVOI_SMTP_URL", "smtp://"),
    ("ENVOI_SMTP_URL", "smtp://mail.example.org:notaport"),
    ("ENVOI_BASE_URL", "ftp://example.org"),
    ("ENVOI_BASE_URL", "example.org"),
    ("ENVOI_OPTIN_TOKEN_MAX_AGE", "a week"),
    ("ENVOI_OPTIN_TOKEN_MAX_AGE", "5"),
    ("ENVOI_API_PAGE_MAX", "0"),
    ("ENVOI_DEFAULT_REGION", "XX"),
    ("ENVOI_SECRET_KEY", "short"),
    ("ENVOI_TWILIO_API_BASE", "not-a-url"),
])
def test_bad_value_names_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError) as err:
        load_config(_env(tmp_path, **{name: value}))
    message = str(err.value)
    assert name in message
    assert "\n" not in message


def test_defaults(tmp_path):
    cfg = load_config(_env(tmp_path))
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'envoi.sqlite3'}"
    assert cfg["REDIS_URL"] == "redis://127.0.0.1:6390/0"
    assert cfg["BASE_URL"] == "http://127.0.0.1:5000"
    assert cfg["SMTP_URL"] is None
    assert cfg["OPTIN_TOKEN_MAX_AGE"] == 604800
    assert cfg["EMAIL_FROM"] == "Envoi <noreply@localhost>"


def test_secret_key_is_generated_once_and_kept(tmp_path):
    first = load_config(_env(tmp_path))["SECRET_KEY"]
    assert len(first) >= 32
    assert load_config(_env(tmp_path))["SECRET_KEY"] == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_good_values_are_kept(tmp_path):
    cfg = load_config(_env(
        tmp_path,
        ENVOI_DATABASE_URL="postgresql://envoi:pw@db.internal:5433/envoi",
        ENVOI_SMTP_URL="smtp://user:pass@mail.example.org:587?starttls=1",
        ENVOI_BASE_URL="https://crm.example.org/",
        ENVOI_OPTIN_TOKEN_MAX_AGE="3600",
        ENVOI_REDIS_URL="redis://cache:6379/2",
    ))
    url = make_url(cfg["SQLALCHEMY_DATABASE_URI"])
    assert (url.host, url.port, url.database, url.password) == ("db.internal", 5433, "envoi", "pw")
    # plain postgresql:// must end up on the psycopg 3 driver we ship
    assert url.get_dialect().driver == "psycopg"
    assert cfg["SMTP_URL"] == "smtp://user:pass@mail.example.org:587?starttls=1"
    assert cfg["BASE_URL"] == "https://crm.example.org"
    assert cfg["OPTIN_TOKEN_MAX_AGE"] == 3600
    assert cfg["REDIS_URL"] == cfg["RATELIMIT_STORAGE_URI"] == "redis://cache:6379/2"


def _process_env(tmp_path, **values) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVOI_")}
    env.update(_env(tmp_path, **values))
    return env


@pytest.mark.parametrize("argv", [
    ["-m", "flask", "--app", "wsgi", "routes"],
    ["-c", "import wsgi"],
])
def test_process_with_bad_config_prints_one_line(tmp_path, argv):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=_process_env(tmp_path, ENVOI_DATABASE_URL="nonsense://"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ENVOI_DATABASE_URL" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_run_script_with_bad_config_prints_one_line(tmp_path):
    """`make run` checks the configuration before starting any process."""
    proc = subprocess.run([sys.executable, "-m", "envoi.run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL,
                          env=_process_env(tmp_path, ENVOI_SMTP_URL="mailto:me@example.org"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "ENVOI_SMTP_URL" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
