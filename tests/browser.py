"""Browser-test fixtures: the app served live on loopback (with a Dramatiq worker thread
draining the StubBroker), a host web site on another origin, and Debian's chromium driven by
Playwright. Import the fixtures in the test module: `from tests.browser import *`.

Chromium is the system one (`make test` installs Debian's package when /usr/bin/chromium is
missing); Playwright's own browser downloads are never used."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dramatiq
import pytest
from werkzeug.serving import make_server

from tests.conftest import configured, free_port

# `chromium` is not exported: tests/conftest.py registers it once for the whole run. Imported
# into two test modules it would be two session fixtures, two Playwright loops in one thread.
__all__ = ["live_server", "host_site", "browser_page", "HostSite", "LiveServer", "CHROMIUM", "serve_live"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class LiveServer:
    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="live-server", daemon=True)

    def start(self) -> "LiveServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_live(app, **config):
    """The app on http://127.0.0.1:<free port> (BASE_URL points there, so sent links open it)
    with `config` applied and a Dramatiq worker thread running queued actors."""
    from workers import broker
    from workers.broker import app_context_middleware

    server = LiveServer(app)
    with configured(app, BASE_URL=server.url, SIGNUP_MIN_SECONDS=0, **config):
        app_context_middleware(broker)._app = app
        broker.flush_all()
        worker = dramatiq.Worker(broker, worker_timeout=100)
        worker.start()
        server.start()
        try:
            yield server
        finally:
            server.stop()
            worker.stop()
            broker.flush_all()


@pytest.fixture
def live_server(app, smtp_server):
    """The live app sending email to the real SMTP server (see serve_live)."""
    yield from serve_live(app)


class HostSite:
    """A third-party web site on its own origin: `add(path, html)` then open `url(path)`."""

    def __init__(self):
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = pages.get(self.path.split("?")[0])
                data = (body or "not found").encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="host-site", daemon=True)
        self.thread.start()

    def add(self, path: str, html: str) -> str:
        self.pages[path] = html
        return self.origin + path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host_site():
    site = HostSite()
    yield site
    site.stop()


@pytest.fixture(scope="session")
def chromium():
    """One headless chromium per session, on a fresh temporary profile (Playwright's launch
    makes one); each test gets its own context, so its own localStorage and cookies."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium):
    context = chromium.new_context(locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()
