"""Domain errors shared by every package, and their mapping to HTTP.

Services raise these; views never build error responses by hand. Under /api the
answer is JSON `{"error": ..., "fields": {...}}`; elsewhere an HTML page.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class EnvoiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class ValidationError(EnvoiError):
    status = 422
    code = "invalid"


class NotFound(EnvoiError):
    status = 404
    code = "not_found"


class Conflict(EnvoiError):
    status = 409
    code = "conflict"


class Forbidden(EnvoiError):
    status = 403
    code = "forbidden"


def _flatten(messages, prefix: str = "") -> dict:
    """webargs nests errors by location and field; users want `field: reason`."""
    out: dict[str, str] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key in ("json", "query", "form", "files", "headers") and not prefix:
                out.update(_flatten(value, ""))
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (dict, list)) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                out.update(_flatten(value, path))
            else:
                out[path] = " ".join(value) if isinstance(value, list) else str(value)
    elif isinstance(messages, list):
        out[prefix or "_"] = " ".join(str(m) for m in messages)
    else:
        out[prefix or "_"] = str(messages)
    return out


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/webhooks/") \
        or request.accept_mimetypes.best == "application/json"


def _respond(status: int, message: str, fields: dict | None = None, headers=None):
    if _wants_json():
        resp = jsonify({"error": message, "fields": fields or {}})
    else:
        resp = render_template("error.html", status=status, message=message, fields=fields or {})
    if isinstance(resp, str):
        from flask import make_response

        resp = make_response(resp)
    resp.status_code = status
    if headers:
        for k, v in headers:
            resp.headers[k] = v
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(EnvoiError)
    def _domain(err: EnvoiError):
        return _respond(err.status, err.message, err.fields)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        data = getattr(err, "data", None) or {}
        fields = _flatten(data.get("messages")) if data.get("messages") else {}
        message = err.description if err.code != 422 else "invalid input"
        headers = [h for h in err.get_headers() if h[0].lower() not in ("content-type", "content-length")]
        return _respond(err.code or 500, message, fields, headers)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        # Never a traceback to a user; the log keeps it.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _respond(500, "internal error; it has been logged")


def _nul_paths(value, path: str = ""):
    if isinstance(value, str):
        if "\x00" in value:
            yield path or "_"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nul_paths(key, f"{path}.{key}" if path else str(key))
            yield from _nul_paths(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nul_paths(item, f"{path}[{i}]")


def nul_fields(req) -> list[str]:
    """Where `req` (a request object) carries a NUL character: query, JSON body or form."""
    found = [f"query.{k}" for k, v in req.args.items(multi=True) if "\x00" in k or "\x00" in v]
    if req.is_json:
        found += list(_nul_paths(req.get_json(silent=True)))
    elif req.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        # Parts without a name come back with None keys: only what a view can read matters.
        found += [f"form.{k}" for k, v in req.form.items(multi=True) if "\x00" in f"{k}{v}"]
        found += [f"{k}.filename" for k, f in req.files.items(multi=True) if "\x00" in f"{k}{f.filename}"]
    return found


def refuse_nul_bytes():
    """NUL cannot be stored in PostgreSQL text and is never meaningful input: refuse it up front."""
    found = nul_fields(request)
    if found:
        raise ValidationError("invalid characters", {p: "contains a NUL character" for p in found[:20]})
