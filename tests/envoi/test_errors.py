"""No traceback ever reaches a user: JSON under /api, an HTML page elsewhere."""
import pytest

from envoi import create_app


@pytest.fixture
def broken_app(app):
    fresh = create_app({k: app.config[k] for k in ("SQLALCHEMY_DATABASE_URI", "SECRET_KEY", "REDIS_URL",
                                                   "INSTANCE_PATH")})

    @fresh.get("/api/v1/boom")
    def api_boom():
        raise RuntimeError("secret internals")

    @fresh.get("/boom")
    def page_boom():
        raise RuntimeError("secret internals")

    return fresh


def test_unexpected_error_under_api_is_json_without_details(broken_app, caplog):
    resp = broken_app.test_client().get("/api/v1/boom")
    assert resp.status_code == 500
    assert resp.get_json() == {"error": "internal error; it has been logged", "fields": {}}
    assert b"secret internals" not in resp.data
    assert "secret internals" in caplog.text  # the log keeps it


def test_unexpected_error_on_a_page_is_html(broken_app):
    resp = broken_app.test_client().get("/boom", headers={"Accept": "text/html"})
    assert resp.status_code == 500 and resp.mimetype == "text/html"
    assert b"secret internals" not in resp.data and b"Traceback" not in resp.data


def test_wrong_method_is_a_json_405(api):
    resp = api.put("/api/v1/contacts", json={})
    assert resp.status_code == 405
    assert resp.get_json()["error"]
    assert "GET" in resp.headers["Allow"]


def test_wrong_content_type_is_a_clean_4xx(api):
    resp = api.post("/api/v1/contacts", data="email=a@example.org",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= resp.status_code < 500
    assert "error" in resp.get_json()


def test_nul_bytes_are_refused_naming_the_field(api):
    resp = api.post("/api/v1/topics", json={"slug": "news", "name": "News\x00letter"})
    assert resp.status_code == 422
    assert resp.get_json()["fields"] == {"name": "contains a NUL character"}
    resp = api.get("/api/v1/contacts?city=Ly%00on")
    assert resp.status_code == 422 and "query.city" in resp.get_json()["fields"]
    assert api.get("/api/v1/topics").get_json() == []


def test_nul_bytes_in_form_fields_and_file_names_are_refused(api):
    import io

    resp = api.post("/api/v1/imports", data={"topic": "news\x00", "file": (io.BytesIO(b"email\na@example.org\n"), "c.csv")},
                    content_type="multipart/form-data")
    assert resp.status_code == 422 and resp.get_json()["fields"] == {"form.topic": "contains a NUL character"}
    resp = api.post("/api/v1/imports", data={"file": (io.BytesIO(b"email\na@example.org\n"), "c\x00.csv")},
                    content_type="multipart/form-data")
    assert resp.status_code == 422 and "file.filename" in resp.get_json()["fields"]
