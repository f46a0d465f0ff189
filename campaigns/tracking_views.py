"""Public tracking routes, hit by every open and click: no login, no rate limit, one statement or two.

    GET /t/o/<token>.gif   open pixel: records the open, always answers the 1x1 GIF (a bad token too:
                           a broken image in a mail client helps nobody), never cached
    GET /t/c/<token>       click: records it and redirects (302) to the URL signed in the token;
                           a forged or altered token is a 404 page, never a redirect
    GET /s/<code>          SMS short link: counts the click, redirects; unknown code: 404
"""
from __future__ import annotations

from flask import Blueprint, Response, abort, redirect, request

from campaigns import tracking
from envoi.extensions import limiter

bp = Blueprint("tracking", __name__)
# Hit by every open: no rate limit (not even its bookkeeping on each request).
limiter.exempt(bp)


def _client():
    # Behind a proxy, ProxyFix (or the deployment) sets remote_addr; we never trust headers here.
    return request.headers.get("User-Agent"), request.remote_addr


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store, no-cache, must-revalidate, max-age=0"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/t/o/<token>.gif")
def open_pixel(token: str):
    ua, ip = _client()
    try:
        tracking.record_open(token, user_agent=ua, ip=ip)
    except tracking.TokenInvalid:
        pass
    return _no_store(Response(tracking.PIXEL, mimetype="image/gif"))


@bp.get("/t/c/<token>")
def click(token: str):
    ua, ip = _client()
    try:
        url = tracking.record_click(token, user_agent=ua, ip=ip)
    except tracking.TokenInvalid:
        abort(404)
    return _no_store(redirect(url, code=302))


@bp.get("/s/<code>")
def short_link(code: str):
    ua, ip = _client()
    url = tracking.follow_short_link(code, user_agent=ua, ip=ip)
    if url is None:
        abort(404)
    return _no_store(redirect(url, code=302))
