"""Staff users and API tokens: hashed at rest, checked on every API request."""
from __future__ import annotations

import hashlib
import re
import secrets

import sqlalchemy as sa
from werkzeug.security import check_password_hash, generate_password_hash

from envoi.auth.models import ROLES, ApiToken, User
from envoi.errors import Conflict, NotFound, ValidationError
from envoi.extensions import db
from envoi.types import utcnow

TOKEN_PREFIX = "envoi_"


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(email: str, role: str, password: str | None = None) -> tuple[User, str]:
    """Create a staff user; returns the user and the password (generated when not given)."""
    # A staff login, not a marketing address: admin@localhost is fine here.
    email = (email or "").strip().lower()
    if not re.fullmatch(r"[^@\s]{1,64}@[^@\s]{1,190}", email):
        raise ValidationError("invalid email", {"email": "expected name@host"})
    if role not in ROLES:
        raise ValidationError("invalid role", {"role": f"must be one of {', '.join(ROLES)}"})
    if password is not None and len(password) < 10:
        raise ValidationError("password too short", {"password": "at least 10 characters"})
    password = password or secrets.token_urlsafe(15)
    if db.session.scalar(sa.select(User.id).where(User.email == email)):
        raise Conflict("a user with this email exists", {"email": "already a user"})
    user = User(email=email, role=role, password_hash=generate_password_hash(password))
    db.session.add(user)
    db.session.commit()
    return user, password


def any_admin_exists() -> bool:
    return db.session.scalar(sa.select(sa.func.count(User.id)).where(User.role == "admin")) > 0


def check_password(email: str, password: str) -> User | None:
    user = db.session.scalar(sa.select(User).where(User.email == email.strip().lower()))
    if user is None or not user.active or not check_password_hash(user.password_hash, password):
        return None
    return user


def create_token(email: str, name: str = "default") -> tuple[ApiToken, str]:
    """Issue an API token for a user; the clear token is returned once and never stored."""
    user = db.session.scalar(sa.select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user {email}", {"email": "no such user"})
    clear = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, name=name[:100], prefix=clear[:12], token_hash=_hash_token(clear))
    db.session.add(token)
    db.session.commit()
    return token, clear


def authenticate_token(clear: str) -> User | None:
    """The active user behind a bearer token, or None."""
    if not clear.startswith(TOKEN_PREFIX) or len(clear) > 200:
        return None
    row = db.session.execute(
        sa.select(ApiToken, User).join(User).where(ApiToken.token_hash == _hash_token(clear))
    ).first()
    if row is None:
        return None
    token, user = row
    if token.revoked_at is not None or not user.active:
        return None
    now = utcnow()
    # Touch at most once a minute: a hot API should not write on every read.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        db.session.execute(sa.update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
        db.session.commit()
    return user


def revoke_token(token_id: int) -> None:
    token = db.session.get(ApiToken, token_id)
    if token is None:
        raise NotFound("no such token")
    token.revoked_at = utcnow()
    db.session.commit()


def list_users() -> list[User]:
    return db.session.scalars(sa.select(User).order_by(User.email)).all()


def set_user_active(user_id: int, active: bool) -> User:
    """Deactivate (or reactivate) a staff user: their sessions and tokens stop working at once."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    if not active and user.role == "admin" and user.active and db.session.scalar(
            sa.select(sa.func.count(User.id)).where(User.role == "admin", User.active.is_(True))) <= 1:
        raise Conflict("the last active admin cannot be deactivated", {"active": "keep one admin"})
    user.active = bool(active)
    db.session.commit()
    return user


def set_user_language(user_id: int, language: str | None) -> None:
    """The admin UI language of a user (None: follow the browser)."""
    if language not in (None, "en", "fr"):
        raise ValidationError("invalid language", {"language": "en or fr"})
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    user.language = language
    db.session.commit()


def list_tokens() -> list[tuple[ApiToken, str]]:
    """Every API token with its owner's email, newest first (never the token itself)."""
    return db.session.execute(sa.select(ApiToken, User.email).join(User).order_by(ApiToken.id.desc())).all()
