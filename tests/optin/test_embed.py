"""GET /forms/<slug>/embed.js over HTTP, and the CORS rules the script depends on."""
from __future__ import annotations

import json

import pytest

from tests.conftest import configured

SITE = "https://shop.example.com"


@pytest.fixture
def form(api):
    body = {"slug": "spring-news", "title": "Spring news", "fields": ["email"], "channels": ["email"],
            "consent_text": "I agree to receive the newsletter.", "allowed_origins": [SITE],
            "popup": {"trigger": "exit", "delay_seconds": 0, "scroll_percent": 50, "frequency_days": 3}}
    resp = api.post("/api/v1/forms", json=body)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def test_script_is_javascript_cached_briefly_with_its_slug(client, form):
    resp = client.get("/forms/spring-news/embed.js")
    assert resp.status_code == 200
    assert resp.mimetype == "application/javascript"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "max-age=300" in resp.headers["Cache-Control"]
    body = resp.get_data(as_text=True)
    assert f"}})({json.dumps('spring-news')});" in body
    assert "__ENVOI_SLUG__" not in body
    # Finds our origin from its own tag and talks to us with fetch: no third-party code.
    assert "document.currentScript" in body and "attachShadow" in body
    assert "import " not in body and "http://" not in body and "https://" not in body


@pytest.mark.parametrize("slug", ["no-such-form", "x*%2F alert(1) %2F*", "%3C%2Fscript%3E"])
def test_unknown_slug_is_a_404_javascript_comment(client, slug):
    resp = client.get(f"/forms/{slug}/embed.js")
    assert resp.status_code == 404
    assert resp.mimetype == "application/javascript"
    body = resp.get_data(as_text=True)
    assert body.startswith("/*") and body.rstrip().endswith("*/") and body.count("*/") == 1
    assert "no-store" in resp.headers["Cache-Control"]


def test_form_json_the_script_reads_is_shared_with_allowed_origins_only(client, form):
    allowed = client.get("/forms/spring-news", headers={"Accept": "application/json", "Origin": SITE})
    assert allowed.status_code == 200
    assert allowed.headers.get("Access-Control-Allow-Origin") == SITE
    data = allowed.get_json()
    assert {"slug", "title", "lang", "fields", "consent_text", "popup", "honeypot", "token", "submit_label",
            "success_message"} <= data.keys()
    assert data["popup"]["trigger"] == "exit" and data["popup"]["frequency_days"] == 3
    assert {"name", "label", "type", "required"} <= data["fields"][0].keys()

    other = client.get("/forms/spring-news", headers={"Accept": "application/json",
                                                      "Origin": "https://evil.example.net"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_signup_post_is_shared_with_allowed_origins_only(app, client, form):
    def post(email, origin):
        token = client.get("/forms/spring-news", headers={"Accept": "application/json"}).get_json()["token"]
        return client.post("/forms/spring-news", data={"email": email, "_token": token, "website": ""},
                           headers={"Accept": "application/json", "Origin": origin})

    with configured(app, SIGNUP_MIN_SECONDS=0):
        ok = post("ada@example.org", SITE)
        assert ok.status_code == 200, ok.get_json()
        assert ok.headers.get("Access-Control-Allow-Origin") == SITE
        assert ok.get_json()["status"] == "ok"
        refused = post("eve@example.org", "https://evil.example.net")
    assert refused.status_code < 500
    assert "Access-Control-Allow-Origin" not in refused.headers
