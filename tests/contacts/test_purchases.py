def test_purchase_by_email_creates_a_customer_and_aggregates(api):
    resp = api.post("/api/v1/purchases", json={"contact": {"email": "New@Example.org"}, "sku": "B-1",
                                               "name": "Bouilloire", "category": "cuisine", "amount": "39.90",
                                               "currency": "eur", "occurred_at": "2024-04-02T10:00:00Z",
                                               "order_ref": "W-1"})
    assert resp.status_code == 201
    assert resp.get_json()["created"] == 1
    contact = api.get("/api/v1/contacts?email=new@example.org").get_json()["items"][0]
    assert contact["lifecycle"] == "customer" and contact["email_status"] == "none"
    resp = api.post("/api/v1/purchases", json=[
        {"email": "new@example.org", "sku": "A-1", "amount": 10, "currency": "EUR",
         "occurred_at": "2023-12-24T10:00:00+01:00", "order_ref": "W-2"},
        {"email": "new@example.org", "sku": "B-1", "amount": "39.90", "currency": "EUR", "order_ref": "W-1"},
    ])
    assert resp.get_json()["created"] == 1 and resp.get_json()["duplicates"] == 1
    contact = api.get(f"/api/v1/contacts/{contact['id']}").get_json()
    assert contact["purchase_count"] == 2
    assert contact["purchase_total"] == "49.90"
    assert contact["first_purchase_at"] == "2023-12-24T09:00:00+00:00"
    assert contact["last_purchase_at"] == "2024-04-02T10:00:00+00:00"
    kinds = [i["type"] for i in api.get(f"/api/v1/contacts/{contact['id']}/timeline").get_json()["items"]]
    assert kinds == ["purchase", "purchase"]


def test_a_bad_line_rejects_the_whole_batch_naming_it(api):
    resp = api.post("/api/v1/purchases", json=[
        {"email": "a@example.org", "sku": "A", "amount": "1", "currency": "EUR"},
        {"email": "a@example.org", "sku": "", "amount": "abc", "currency": "EURO", "quantity": 0, "colour": "red"},
        {"sku": "C", "amount": "1", "currency": "EUR"},
    ])
    assert resp.status_code == 422
    fields = resp.get_json()["fields"]
    assert {"[1].sku", "[1].amount", "[1].currency", "[1].quantity", "[1].colour", "[2].contact"} <= set(fields)
    assert api.get("/api/v1/contacts").get_json()["items"] == []


def test_unknown_contact_id_is_404_and_empty_body_is_422(api):
    resp = api.post("/api/v1/purchases", json={"contact": {"id": 99}, "sku": "A", "amount": "1", "currency": "EUR"})
    assert resp.status_code == 404 and "[0].contact.id" in resp.get_json()["fields"]
    assert api.post("/api/v1/purchases", json=[]).status_code == 422
    assert api.post("/api/v1/purchases", data="x", headers={"Content-Type": "application/json"}).status_code == 422
