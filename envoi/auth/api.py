"""Bearer-token authentication and role checks for the REST API."""
from __future__ import annotations

from functools import wraps

from flask import g, request

from envoi.auth.errors import AuthError
from envoi.auth.services import authenticate_token
from envoi.errors import Forbidden

# What each role may do: viewers read, marketers write, admins everything.
RANK = {"viewer": 0, "marketer": 1, "admin": 2}


def require(role: str = "viewer"):
    """Decorator: a valid bearer token whose user has at least `role`."""

    def deco(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value:
                raise AuthError("missing bearer token", {"Authorization": "expected 'Bearer <token>'"})
            user = authenticate_token(value.strip())
            if user is None:
                raise AuthError("invalid or revoked token", {"Authorization": "token not recognised"})
            if RANK[user.role] < RANK[role]:
                raise Forbidden(f"requires role {role}", {"role": f"{user.role} may not do this"})
            g.user = user
            return view(*args, **kwargs)

        return wrapper

    return deco


def readonly_or(role: str):
    """GET/HEAD need viewer; anything else needs `role`."""

    def deco(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            needed = "viewer" if request.method in ("GET", "HEAD") else role
            return require(needed)(view)(*args, **kwargs)

        return wrapper

    return deco
