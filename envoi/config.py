"""One Config, read from ENVOI_* environment variables (and `.env`), checked at start-up."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE = ROOT / "instance"


class ConfigError(Exception):
    """Bad configuration: the message is the one line shown at start-up."""


def _int(env: dict, name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _check_database_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"ENVOI_DATABASE_URL={url!r} is not a database URL "
                          "(expected sqlite:///path or postgresql+psycopg://user@host/db)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"ENVOI_DATABASE_URL uses {backend!r}: Envoi supports sqlite and postgresql")
    if backend == "postgresql" and parsed.get_driver_name() not in ("psycopg", "psycopg2"):
        # Plain postgresql:// means psycopg2 to SQLAlchemy; we ship psycopg 3.
        url = str(parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
    return url


def _check_smtp_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(f"ENVOI_SMTP_URL={url!r} must look like smtp://user:pass@host:port or smtps://host:port")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"ENVOI_SMTP_URL={url!r} has a bad port") from None
    return url


def _check_http_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={url!r} must be an http(s) URL")
    return url.rstrip("/")


def _secret_key(env: dict, instance: Path) -> str:
    key = env.get("ENVOI_SECRET_KEY")
    if key:
        if len(key) < 16:
            raise ConfigError("ENVOI_SECRET_KEY is too short: use at least 16 characters")
        return key
    # Generated once and kept, so tokens and unsubscribe links survive restarts.
    path = instance / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def load_config(env: dict | None = None) -> dict:
    """Build the Flask config mapping from the environment; raise ConfigError on bad values."""
    if env is None:
        from dotenv import load_dotenv

        # `.env` fills in what the real environment does not set.
        load_dotenv(ROOT / ".env", override=False)
        env = os.environ
    env = dict(env)
    instance = Path(env.get("ENVOI_INSTANCE_PATH") or DEFAULT_INSTANCE)
    db_url = env.get("ENVOI_DATABASE_URL") or f"sqlite:///{instance / 'envoi.sqlite3'}"
    smtp = env.get("ENVOI_SMTP_URL") or None
    region = (env.get("ENVOI_DEFAULT_REGION") or "FR").upper()
    import phonenumbers

    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"ENVOI_DEFAULT_REGION={region!r} is not a region code such as FR or GB")
    cfg = {
        "INSTANCE_PATH": str(instance),
        "SQLALCHEMY_DATABASE_URI": _check_database_url(db_url),
        "REDIS_URL": env.get("ENVOI_REDIS_URL") or "redis://127.0.0.1:6390/0",
        "SECRET_KEY": _secret_key(env, instance),
        "BASE_URL": _check_http_url("ENVOI_BASE_URL", env.get("ENVOI_BASE_URL") or "http://127.0.0.1:5000"),
        "SMTP_URL": _check_smtp_url(smtp) if smtp else None,
        "EMAIL_FROM": env.get("ENVOI_EMAIL_FROM") or "Envoi <noreply@localhost>",
        "POSTAL_ADDRESS": env.get("ENVOI_POSTAL_ADDRESS", ""),
        "TWILIO_ACCOUNT_SID": env.get("ENVOI_TWILIO_ACCOUNT_SID") or None,
        "TWILIO_AUTH_TOKEN": env.get("ENVOI_TWILIO_AUTH_TOKEN") or None,
        "TWILIO_FROM": env.get("ENVOI_TWILIO_FROM") or None,
        "TWILIO_MESSAGING_SERVICE_SID": env.get("ENVOI_TWILIO_MESSAGING_SERVICE_SID") or None,
        "TWILIO_API_BASE": _check_http_url("ENVOI_TWILIO_API_BASE",
                                           env.get("ENVOI_TWILIO_API_BASE") or "https://api.twilio.com"),
        "OPTIN_TOKEN_MAX_AGE": _int(env, "ENVOI_OPTIN_TOKEN_MAX_AGE", 604800, minimum=60),
        "DEFAULT_REGION": region,
        "API_PAGE_MAX": _int(env, "ENVOI_API_PAGE_MAX", 500, minimum=1),
        "IMPORT_DIR": str(instance / "imports"),
        "RATELIMIT_STORAGE_URI": env.get("ENVOI_REDIS_URL") or "redis://127.0.0.1:6390/0",
    }
    return cfg
