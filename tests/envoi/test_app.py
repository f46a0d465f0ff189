def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}


def test_openapi_document_lists_contact_routes(client):
    resp = client.get("/api/v1/openapi.json")
    assert resp.status_code == 200
    paths = resp.get_json()["paths"]
    assert "/api/v1/contacts" in paths
    assert "/api/v1/contacts/{contact_id}/timeline" in paths
    assert "/api/v1/purchases" in paths


def test_unknown_api_route_is_json_404(client):
    resp = client.get("/api/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.get_json()["error"]


def test_unknown_page_is_html_404(client):
    resp = client.get("/nothing-here", headers={"Accept": "text/html"})
    assert resp.status_code == 404
    assert resp.mimetype == "text/html"
    assert b"Traceback" not in resp.data
