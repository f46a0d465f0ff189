"""GET /forms/<slug>/embed.js: the embeddable form / popup script.

The script (optin/static/embed.js) is the same for every form; only the slug is written into
it. It finds our origin from its own src, fetches GET /forms/<slug> as JSON (CORS, limited to
the form's allowed origins by the form view) and posts the signup back there."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response

bp = Blueprint("embed", __name__)

SCRIPT = Path(__file__).resolve().parent / "static" / "embed.js"
CACHE_SECONDS = 300
_SAFE_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}", re.IGNORECASE)


@lru_cache(maxsize=1)
def _source(mtime: float) -> str:
    return SCRIPT.read_text(encoding="utf-8")


def _script(slug: str) -> str:
    # The slug goes in as a JSON string literal; "</" cannot end anything in a .js response.
    return _source(SCRIPT.stat().st_mtime).replace("__ENVOI_SLUG__", json.dumps(slug))


def _form_exists(slug: str) -> bool:
    from sqlalchemy import select

    from envoi.extensions import db
    from optin.models import Form

    return db.session.scalar(select(Form.id).where(Form.slug == slug)) is not None


def _javascript(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, mimetype="application/javascript")
    response.headers["X-Content-Type-Options"] = "nosniff"
    if status == 200:
        response.headers["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
    else:
        response.headers["Cache-Control"] = "no-store"
    return response


# <path:...> so that even a slug with an encoded "/" gets a JavaScript answer, not an HTML page.
@bp.get("/forms/<path:slug>/embed.js")
def embed_script(slug: str):
    """The form's script; an unknown slug is a 404 whose body is a JS comment, so a page that
    embeds a deleted form gets no syntax error in its console."""
    if not _SAFE_SLUG.fullmatch(slug):  # never echo something that could close the comment
        return _javascript("/* Envoi: no such signup form */\n", 404)
    if not _form_exists(slug):
        return _javascript(f"/* Envoi: no signup form {slug} */\n", 404)
    return _javascript(_script(slug))
