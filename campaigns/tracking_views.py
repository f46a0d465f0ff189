"""Public tracking routes, hit by every open and click: no login, no rate limit, no database write.

    GET /t/o/<token>.gif   open pixel: records the open, always answers the 1x1 GIF (a bad token too:
                           a broken image in a mail client helps nobody), never cached
    GET /t/c/<token>       click: records it and redirects (302) to the URL signed in the token;
                           a forged or altered token is a 404 page, never a redirect
    GET /s/<code>          SMS short link: counts the click, redirects; unknown code: 404

Recording is a token check and an append to the process's hit buffer (campaigns/tracking.py
HitBuffer: one Redis RPUSH of many every ENVOI_TRACKING_FLUSH_MS; the drainer writes the
events in batches). TrackingFastPath answers the plain GET of a good token or a known code in
front of Flask — a full Flask request costs more than everything else a hit does — with the
very answer the Flask route gives (same status, headers and body; tests compare them). Anything
else (a bad token, a query string, HEAD, an unknown code, odd characters) goes on to Flask.
"""
from __future__ import annotations

import re

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


def pixel_response() -> Response:
    return _no_store(Response(tracking.PIXEL, mimetype="image/gif"))


def redirect_response(url: str) -> Response:
    return _no_store(redirect(url, code=302))


@bp.get("/t/o/<token>.gif")
def open_pixel(token: str):
    ua, ip = _client()
    try:
        tracking.record_open(token, user_agent=ua, ip=ip)
    except tracking.TokenInvalid:
        pass
    return pixel_response()


@bp.get("/t/c/<token>")
def click(token: str):
    ua, ip = _client()
    try:
        url = tracking.record_click(token, user_agent=ua, ip=ip)
    except tracking.TokenInvalid:
        abort(404)
    return redirect_response(url)


@bp.get("/s/<code>")
def short_link(code: str):
    ua, ip = _client()
    url = tracking.follow_short_link(code, user_agent=ua, ip=ip)
    if url is None:
        abort(404)
    return redirect_response(url)


# ---------------------------------------------------------------- the fast path

_PATHS = re.compile(r"/(?:t/(o)/([A-Za-z0-9_\-.]{1,4000})\.gif|t/(c)/([A-Za-z0-9_\-.]{1,4000})|s/([0-9A-Za-z]{4,24}))")


class TrackingFastPath:
    """WSGI middleware: the tracking routes' usual case without the Flask request machinery.

    The answers are the Flask route's own Response objects, turned into (status, headers, body)
    once: the pixel's for good, a redirect's per URL (a campaign has a few links; the cache is
    bounded) — building and serialising a Response per hit cost a fifth of a hit's CPU."""

    MAX_URLS = 10_000

    def __init__(self, wsgi_app, flask_app):
        self.wsgi_app = wsgi_app
        self.flask_app = flask_app
        self._pixel = None
        self._redirects: dict[str, tuple] = {}

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if (path[:3] in ("/t/", "/s/") and environ.get("REQUEST_METHOD") == "GET"
                and not environ.get("QUERY_STRING")):
            match = _PATHS.fullmatch(path)
            if match is not None:
                answer = self._answer(match, environ)
                if answer is not None:
                    status, headers, body = answer
                    start_response(status, list(headers))
                    return [body]
        return self.wsgi_app(environ, start_response)

    def _answer(self, match: re.Match, environ) -> tuple | None:
        ua, ip = environ.get("HTTP_USER_AGENT"), environ.get("REMOTE_ADDR")
        with self.flask_app.app_context():
            try:
                if match.group(1):
                    tracking.record_open(match.group(2), user_agent=ua, ip=ip)
                    if self._pixel is None:
                        self._pixel = _frozen(pixel_response(), environ)
                    return self._pixel
                if match.group(3):
                    url = tracking.record_click(match.group(4), user_agent=ua, ip=ip)
                else:
                    url = tracking.follow_short_link(match.group(5), user_agent=ua, ip=ip)
                    if url is None:
                        return None
            except tracking.TokenInvalid:
                return None
        answer = self._redirects.get(url)
        if answer is None:
            if len(self._redirects) >= self.MAX_URLS:
                self._redirects.clear()
            answer = self._redirects[url] = _frozen(redirect_response(url), environ)
        return answer


def _frozen(response: Response, environ) -> tuple[str, tuple, bytes]:
    """What `response` sends, as WSGI's status, header list and body."""
    return response.status, tuple(response.get_wsgi_headers(environ).to_wsgi_list()), response.get_data()


@bp.record_once
def _mount(state) -> None:
    """Every app that registers these routes answers them through the fast path first."""
    state.app.wsgi_app = TrackingFastPath(state.app.wsgi_app, state.app)
