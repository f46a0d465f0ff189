"""/api/v1/forms: CRUD, roles, validation (422 naming the fields)."""
from __future__ import annotations

import pytest

from contacts import services as contacts


def _valid(**over):
    data = {"slug": "news", "title": "News", "fields": ["email", "first_name"], "channels": ["email"],
            "consent_text": "Yes, send me the news.", "consent_version": "2024-01"}
    data.update(over)
    return data


def test_crud_and_roles(app, marketer_api, viewer_api):
    with app.app_context():
        contacts.create_topic("weekly", "Weekly")
        contacts.define_attribute("shoe_size", "number")
    resp = marketer_api.post("/api/v1/forms", json=_valid(
        topics=["weekly"], attributes=["shoe_size"], allowed_origins=["HTTPS://Shop.Example.org:443/"],
        popup={"trigger": "scroll", "scroll_percent": 40, "frequency_days": 3},
        redirect_url="https://shop.example.org/thanks"))
    assert resp.status_code == 201, resp.get_json()
    form = resp.get_json()
    assert form["allowed_origins"] == ["https://shop.example.org"]
    assert form["double_opt_in"] is True and form["consent_version"] == "2024-01"
    assert form["popup"] == {"trigger": "scroll", "delay_seconds": 5, "scroll_percent": 40, "frequency_days": 3}
    assert form["fields"] == ["email", "first_name"] and form["topics"] == ["weekly"]
    assert viewer_api.get(f"/api/v1/forms/{form['id']}").get_json()["slug"] == "news"
    assert viewer_api.get("/api/v1/forms").get_json()["items"][0]["id"] == form["id"]
    assert viewer_api.post("/api/v1/forms", json=_valid(slug="x")).status_code == 403
    assert marketer_api.post("/api/v1/forms", json=_valid()).status_code == 409
    patched = marketer_api.patch(f"/api/v1/forms/{form['id']}", json={"title": "Lettre", "double_opt_in": False})
    assert patched.status_code == 200 and patched.get_json()["title"] == "Lettre"
    assert patched.get_json()["double_opt_in"] is False and patched.get_json()["topics"] == ["weekly"]
    assert viewer_api.delete(f"/api/v1/forms/{form['id']}").status_code == 403
    assert marketer_api.delete(f"/api/v1/forms/{form['id']}").status_code == 204
    assert viewer_api.get(f"/api/v1/forms/{form['id']}").status_code == 404


@pytest.mark.parametrize("over, field", [
    ({"slug": "Bad Slug"}, "slug"),
    ({"title": ""}, "title"),
    ({"fields": ["email", "password"]}, "fields"),
    ({"fields": ["first_name"]}, "fields"),
    ({"fields": "email"}, "fields"),
    ({"attributes": ["undeclared"]}, "attributes"),
    ({"topics": ["missing"]}, "topics"),
    ({"channels": ["fax"]}, "channels"),
    ({"channels": ["sms"]}, "channels"),  # needs the phone field
    ({"redirect_url": "javascript:alert(1)"}, "redirect_url"),
    ({"confirm_redirect_url": "ftp://example.org/"}, "confirm_redirect_url"),
    ({"allowed_origins": ["https://example.org/path"]}, "allowed_origins[0]"),
    ({"allowed_origins": ["example.org"]}, "allowed_origins[0]"),
    ({"allowed_origins": "https://example.org"}, "allowed_origins"),
    ({"popup": {"trigger": "hover"}}, "popup.trigger"),
    ({"popup": {"trigger": "delay", "delay_seconds": -1}}, "popup.delay_seconds"),
    ({"popup": {"trigger": "scroll", "scroll_percent": 150}}, "popup.scroll_percent"),
    ({"popup": {"frequency_days": "7"}}, "popup.frequency_days"),
    ({"popup": {"colour": "red"}}, "popup.colour"),
    ({"double_opt_in": "yes"}, "double_opt_in"),
    ({"consent_version": ""}, "consent_version"),
    ({"owner": "me"}, "owner"),
])
def test_validation(marketer_api, over, field):
    resp = marketer_api.post("/api/v1/forms", json=_valid(**over))
    assert resp.status_code == 422, resp.get_json()
    assert field in resp.get_json()["fields"], resp.get_json()


def test_patch_validates_against_the_stored_form(marketer_api):
    form = marketer_api.post("/api/v1/forms", json=_valid()).get_json()
    resp = marketer_api.patch(f"/api/v1/forms/{form['id']}", json={"channels": ["email", "sms"]})
    assert resp.status_code == 422 and "channels" in resp.get_json()["fields"]
    resp = marketer_api.patch(f"/api/v1/forms/{form['id']}", json={"fields": ["email", "phone"],
                                                                   "channels": ["email", "sms"]})
    assert resp.status_code == 200
    assert marketer_api.patch("/api/v1/forms/999", json={"title": "x"}).status_code == 404
    assert marketer_api.get("/api/v1/forms?cursor=@@").status_code == 422
