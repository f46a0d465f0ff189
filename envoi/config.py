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


def _float(env: dict, name: str, default: float, minimum: float = 0.0, maximum: float | None = None) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{name}={raw!r} must be between {minimum} and {maximum if maximum is not None else 'any'}")
    return value


def _quiet_hours(env: dict) -> tuple[str, str] | None:
    """ENVOI_SMS_QUIET_HOURS "20:30-08:00" (in the recipient's timezone); "" or "off" disables."""
    raw = env.get("ENVOI_SMS_QUIET_HOURS", "20:30-08:00").strip()
    if raw.lower() in ("", "off", "none"):
        return None
    import re

    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)", raw)
    if not match or raw[:5] == raw[6:]:
        raise ConfigError(f"ENVOI_SMS_QUIET_HOURS={raw!r} must look like 20:30-08:00 (or off)")
    return raw[:5], raw[6:]


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _quiet_days(env: dict) -> tuple[str, ...]:
    raw = env.get("ENVOI_SMS_QUIET_DAYS", "sun").strip().lower()
    days = tuple(d.strip() for d in raw.split(",") if d.strip()) if raw not in ("", "off", "none") else ()
    bad = [d for d in days if d not in DAYS]
    if bad:
        raise ConfigError(f"ENVOI_SMS_QUIET_DAYS has {bad[0]!r}: use mon,tue,wed,thu,fri,sat,sun (or off)")
    return days


def _rate(env: dict, name: str, default: str) -> str:
    raw = env.get(name) or default
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a rate such as '30/minute' or '5/hour;100/day'") from None
    return raw


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
        # Days after a click (or a delivery) in which a purchase is credited to the campaign.
        "CONVERSION_WINDOW_DAYS": _int(env, "ENVOI_CONVERSION_WINDOW_DAYS", 7, minimum=1),
        # A web process pushes its opens and clicks to Redis in one go this often (campaigns/tracking.py).
        "TRACKING_FLUSH_MS": _int(env, "ENVOI_TRACKING_FLUSH_MS", 50, minimum=1),
        "DEFAULT_REGION": region,
        "API_PAGE_MAX": _int(env, "ENVOI_API_PAGE_MAX", 500, minimum=1),
        "IMPORT_DIR": str(instance / "imports"),
        "RATELIMIT_STORAGE_URI": env.get("ENVOI_REDIS_URL") or "redis://127.0.0.1:6390/0",
        # Opt-in: unconfirmed signups are anonymised after this many days; public endpoint limits.
        "OPTIN_PENDING_DAYS": _int(env, "ENVOI_OPTIN_PENDING_DAYS", 30, minimum=1),
        "SIGNUP_RATE_PER_IP": _rate(env, "ENVOI_SIGNUP_RATE_PER_IP", "30/minute;300/hour"),
        "SIGNUP_RATE_PER_ADDRESS": _rate(env, "ENVOI_SIGNUP_RATE_PER_ADDRESS", "1/10minutes"),
        "FORM_VIEW_RATE_PER_IP": _rate(env, "ENVOI_FORM_VIEW_RATE_PER_IP", "60/minute;600/hour"),
        "SIGNUP_MIN_SECONDS": _float(env, "ENVOI_SIGNUP_MIN_SECONDS", 2.0, maximum=600),
        # Campaigns.
        "UNSUBSCRIBE_MAILTO": env.get("ENVOI_UNSUBSCRIBE_MAILTO") or None,
        "DKIM_KEY_PATH": env.get("ENVOI_DKIM_KEY_PATH") or None,
        "DKIM_SELECTOR": env.get("ENVOI_DKIM_SELECTOR") or None,
        "DKIM_DOMAIN": env.get("ENVOI_DKIM_DOMAIN") or None,
        "SMS_OPTOUT_TEXT": env.get("ENVOI_SMS_OPTOUT_TEXT", "STOP au 36111"),
        "SMS_QUIET_HOURS": _quiet_hours(env),
        "SMS_QUIET_DAYS": _quiet_days(env),
        # Messages per second / per hour per channel, shared by all workers; 0 = no limit.
        "EMAIL_RATE_PER_SECOND": _float(env, "ENVOI_EMAIL_RATE_PER_SECOND", 0),
        "EMAIL_RATE_PER_HOUR": _int(env, "ENVOI_EMAIL_RATE_PER_HOUR", 0),
        "SMS_RATE_PER_SECOND": _float(env, "ENVOI_SMS_RATE_PER_SECOND", 0),
        "SMS_RATE_PER_HOUR": _int(env, "ENVOI_SMS_RATE_PER_HOUR", 0),
        "CAMPAIGN_BATCH_SIZE": _int(env, "ENVOI_CAMPAIGN_BATCH_SIZE", 200, minimum=1),
        "DELIVERY_LEASE_SECONDS": _int(env, "ENVOI_DELIVERY_LEASE_SECONDS", 300, minimum=5),
        "DELIVERY_MAX_ATTEMPTS": _int(env, "ENVOI_DELIVERY_MAX_ATTEMPTS", 5, minimum=1),
        # First retry after a transient error, doubled at each attempt (with jitter), at most 6 h.
        "DELIVERY_RETRY_BASE_SECONDS": _float(env, "ENVOI_DELIVERY_RETRY_BASE_SECONDS", 60),
        # A campaign pauses itself when this share of its last messages failed (0 = never).
        "CAMPAIGN_PAUSE_ERROR_RATE": _float(env, "ENVOI_CAMPAIGN_PAUSE_ERROR_RATE", 0.2, maximum=1),
    }
    return cfg
