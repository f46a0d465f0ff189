"""Parallel upserts of one address over real HTTP give one contact (SQLite and PostgreSQL)."""
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from werkzeug.serving import make_server

from tests.conftest import make_api


def serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_port}"


def test_fifty_parallel_upserts_of_one_address_give_one_contact(app, client):
    api = make_api(app, client, "marketer")
    server, base = serve(app)
    try:
        def upsert(i):
            body = {"email": "Race@Example.org", "first_name": f"N{i}"}
            if i % 2:
                body["phone"] = "06 11 22 33 44"
            return requests.post(f"{base}/api/v1/contacts", json=body, headers=api.headers, timeout=60)

        with ThreadPoolExecutor(max_workers=25) as pool:
            responses = list(pool.map(upsert, range(50)))
    finally:
        server.shutdown()
    assert {r.status_code for r in responses} <= {200, 201}, [r.text for r in responses if r.status_code >= 300][:3]
    assert sum(r.status_code == 201 for r in responses) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    items = api.get("/api/v1/contacts").get_json()["items"]
    assert len(items) == 1
    assert items[0]["email"] == "race@example.org" and items[0]["phone"] == "+33611223344"


def test_parallel_purchases_keep_exact_aggregates(app, client):
    api = make_api(app, client, "marketer")
    cid = api.post("/api/v1/contacts", json={"email": "buyer@example.org"}).get_json()["id"]
    server, base = serve(app)
    try:
        def buy(i):
            body = [{"contact": {"id": cid}, "sku": f"SKU-{i}", "amount": "10.50", "currency": "EUR",
                     "order_ref": f"O-{i // 2}", "occurred_at": f"2024-01-{i % 28 + 1:02d}T12:00:00Z"}]
            return requests.post(f"{base}/api/v1/purchases", json=body, headers=api.headers, timeout=60)

        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(buy, range(20)))
    finally:
        server.shutdown()
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses if r.status_code != 201][:3]
    contact = api.get(f"/api/v1/contacts/{cid}").get_json()
    assert contact["purchase_count"] == 20
    assert contact["purchase_total"] == "210.00"
    assert contact["lifecycle"] == "customer"
