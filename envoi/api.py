"""Helpers shared by every REST blueprint under /api/v1."""
from __future__ import annotations

from flask import current_app, request

from envoi.errors import ValidationError

# OpenAPI security requirement of every route that needs a bearer token.
SECURITY = [{"bearer": []}]


def json_object() -> dict:
    """The request's JSON object as sent: schemas check types, services normalise the original values."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError("expected a JSON object", {"_": "expected a JSON object"})
    return body


def page_limit(args) -> int:
    """`?limit=`, capped by ENVOI_API_PAGE_MAX."""
    return min(args["limit"], current_app.config["API_PAGE_MAX"])
