"""Segments over HTTP: CRUD by role, live counts, preview, CSV export, errors with paths."""
from __future__ import annotations

import csv
import io

LYON = {"field": "city", "op": "eq", "value": "Lyon"}


def _contacts(api, n_lyon=3, n_paris=2):
    for i in range(n_lyon):
        r = api.post("/api/v1/contacts", json={"email": f"lyon{i}@example.org", "city": "Lyon", "tags": ["vip"]})
        assert r.status_code == 201, r.json
    for i in range(n_paris):
        api.post("/api/v1/contacts", json={"email": f"paris{i}@example.org", "city": "Paris"})


def test_crud_count_and_roles(api, marketer_api, viewer_api):
    _contacts(api)
    r = marketer_api.post("/api/v1/segments", json={"name": "Lyon", "rules": LYON})
    assert r.status_code == 201, r.json
    seg = r.json
    assert seg["name"] == "Lyon" and seg["rules"] == LYON and seg["id"]
    assert viewer_api.get(f"/api/v1/segments/{seg['id']}").json["rules"] == LYON
    assert viewer_api.get(f"/api/v1/segments/{seg['id']}/count").json == {"count": 3}
    listing = viewer_api.get("/api/v1/segments").json
    assert [s["id"] for s in listing["items"]] == [seg["id"]] and listing["next"] is None

    assert viewer_api.post("/api/v1/segments", json={"name": "x", "rules": LYON}).status_code == 403
    assert viewer_api.delete(f"/api/v1/segments/{seg['id']}").status_code == 403

    r = marketer_api.patch(f"/api/v1/segments/{seg['id']}",
                           json={"rules": {"not": LYON}, "name": "Not Lyon"})
    assert r.status_code == 200 and r.json["name"] == "Not Lyon"
    assert viewer_api.get(f"/api/v1/segments/{seg['id']}/count").json == {"count": 2}

    # Counts are live: a new contact is counted at once.
    api.post("/api/v1/contacts", json={"email": "new@example.org", "city": "Marseille"})
    assert viewer_api.get(f"/api/v1/segments/{seg['id']}/count").json == {"count": 3}

    assert marketer_api.post("/api/v1/segments", json={"name": "Not  Lyon", "rules": LYON}).status_code == 409
    assert marketer_api.delete(f"/api/v1/segments/{seg['id']}").status_code == 204
    assert viewer_api.get(f"/api/v1/segments/{seg['id']}").status_code == 404
    assert viewer_api.get(f"/api/v1/segments/{seg['id']}/count").status_code == 404


def test_pages(marketer_api):
    for i in range(3):
        marketer_api.post("/api/v1/segments", json={"name": f"s{i}", "rules": {"all": []}})
    first = marketer_api.get("/api/v1/segments?limit=2").json
    assert len(first["items"]) == 2 and first["next"]
    rest = marketer_api.get(f"/api/v1/segments?limit=2&cursor={first['next']}").json
    assert [s["name"] for s in rest["items"]] == ["s2"] and rest["next"] is None
    assert marketer_api.get("/api/v1/segments?cursor=!!").status_code == 422


def test_invalid_rules_are_422_with_the_path(marketer_api):
    r = marketer_api.post("/api/v1/segments", json={"name": "bad", "rules": {"all": [
        LYON, LYON, {"field": "headcount", "op": "gt", "value": "ten"}]}})
    assert r.status_code == 422
    assert r.json["fields"] == {"rules.all[2].value": "expected a number"}
    assert r.json["error"] == "invalid segment rules"
    r = marketer_api.post("/api/v1/segments/preview", json={"rules": {"field": "shoe", "op": "eq", "value": 1}})
    assert r.status_code == 422 and r.json["fields"] == {"rules.field": "unknown field 'shoe'"}
    r = marketer_api.post("/api/v1/segments", json={"name": "", "rules": LYON})
    assert r.status_code == 422 and "name" in r.json["fields"]
    r = marketer_api.post("/api/v1/segments", json={"name": "x", "rules": "city = 'Lyon'"})
    assert r.status_code == 422 and "rules" in r.json["fields"]
    r = marketer_api.post("/api/v1/segments", json={"name": "x"})
    assert r.status_code == 422 and "rules" in r.json["fields"]


def test_preview(api, viewer_api):
    _contacts(api, n_lyon=12)
    r = viewer_api.post("/api/v1/segments/preview", json={"rules": {"field": "tags", "op": "contains", "value": "vip"}})
    assert r.status_code == 200, r.json
    assert r.json["count"] == 12
    sample = r.json["sample"]
    assert len(sample) == 10 and all(c["city"] == "Lyon" and c["tags"] == ["vip"] for c in sample)
    assert [c["id"] for c in sample] == sorted(c["id"] for c in sample)


def test_erased_contacts_leave_counts_and_exports(api, marketer_api):
    _contacts(api, n_lyon=2, n_paris=0)
    gone = api.get("/api/v1/contacts?city=Lyon").json["items"][0]["id"]
    assert api.delete(f"/api/v1/contacts/{gone}").status_code == 204
    seg = marketer_api.post("/api/v1/segments", json={"name": "all", "rules": {"all": []}}).json
    assert marketer_api.get(f"/api/v1/segments/{seg['id']}/count").json == {"count": 1}


def test_export_csv(api, marketer_api, viewer_api):
    api.post("/api/v1/attributes", json={"key": "shoe_size", "type": "number"})
    _contacts(api, n_lyon=3)
    api.post("/api/v1/contacts", json={"email": "attr@example.org", "city": "Lyon", "attributes": {"shoe_size": 42},
                                       "tags": ["a", "b"]})
    seg = marketer_api.post("/api/v1/segments", json={"name": "Lyon", "rules": LYON}).json
    assert viewer_api.get(f"/api/v1/segments/{seg['id']}/export").status_code == 403
    r = marketer_api.get(f"/api/v1/segments/{seg['id']}/export")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["email"] for row in rows] == ["lyon0@example.org", "lyon1@example.org", "lyon2@example.org",
                                              "attr@example.org"]
    assert rows[-1]["attributes.shoe_size"] == "42" and rows[-1]["tags"] == "a|b"
    assert marketer_api.get("/api/v1/segments/999/export").status_code == 404


def test_openapi_documents_segments(client):
    paths = client.get("/api/v1/openapi.json").json["paths"]
    assert {"/api/v1/segments", "/api/v1/segments/{segment_id}", "/api/v1/segments/{segment_id}/count",
            "/api/v1/segments/preview", "/api/v1/segments/{segment_id}/export"} <= set(paths)
