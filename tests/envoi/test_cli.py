"""`flask users ...` and `flask tokens ...` through Flask's CLI runner."""
from __future__ import annotations

import pytest


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def _password(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("password (shown once): ")]
    assert len(lines) == 1, output
    return lines[0].split(": ", 1)[1]


def test_create_user_prints_generated_password_once(app, runner):
    from envoi.auth.services import check_password

    result = runner.invoke(args=["users", "create", "Ada@Example.org", "--role", "marketer"])
    assert result.exit_code == 0, result.output
    assert "created marketer ada@example.org" in result.output
    password = _password(result.output)
    assert result.output.count(password) == 1
    with app.app_context():
        user = check_password("ada@example.org", password)
        assert user is not None and user.role == "marketer"
        assert check_password("ada@example.org", password + "x") is None


def test_create_user_with_given_password_does_not_print_it(app, runner):
    from envoi.auth.services import check_password

    result = runner.invoke(args=["users", "create", "bob@example.org", "--role", "viewer",
                                 "--password", "a long enough password"])
    assert result.exit_code == 0, result.output
    assert "password" not in result.output
    with app.app_context():
        assert check_password("bob@example.org", "a long enough password") is not None


def test_duplicate_user_is_a_clear_error(runner):
    assert runner.invoke(args=["users", "create", "ada@example.org", "--role", "admin"]).exit_code == 0
    result = runner.invoke(args=["users", "create", "ADA@example.org", "--role", "viewer"])
    assert result.exit_code == 1
    assert "Error: a user with this email exists" in result.output
    assert "Traceback" not in result.output


def test_bad_role_and_short_password_are_refused(runner):
    result = runner.invoke(args=["users", "create", "ada@example.org", "--role", "owner"])
    assert result.exit_code == 2
    assert "'owner' is not one of 'admin', 'marketer', 'viewer'" in result.output
    result = runner.invoke(args=["users", "create", "ada@example.org", "--role", "admin", "--password", "short"])
    assert result.exit_code == 1
    assert "password too short" in result.output


def test_bad_email_is_refused(runner):
    result = runner.invoke(args=["users", "create", "not-an-address", "--role", "admin"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")


def test_if_no_admin_creates_the_first_admin_only(runner):
    first = runner.invoke(args=["users", "create", "admin@localhost", "--role", "admin", "--if-no-admin"])
    assert first.exit_code == 0, first.output
    _password(first.output)
    again = runner.invoke(args=["users", "create", "admin@localhost", "--role", "admin", "--if-no-admin"])
    assert again.exit_code == 0
    assert "an admin user exists already" in again.output
    assert "password" not in again.output.replace("an admin user", "")


def _token(runner, email: str, role: str) -> str:
    assert runner.invoke(args=["users", "create", email, "--role", role]).exit_code == 0
    result = runner.invoke(args=["tokens", "create", email, "--name", "ci"])
    assert result.exit_code == 0, result.output
    assert "'ci'" in result.output
    return result.output.strip().splitlines()[-1]


def test_token_on_last_line_authenticates(client, runner):
    token = _token(runner, "ada@example.org", "admin")
    assert token.startswith("envoi_")
    resp = client.get("/api/v1/contacts", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    assert resp.get_json()["items"] == []


@pytest.mark.parametrize("header", [
    "Bearer envoi_garbage", "Bearer nonsense", "Basic YWRhOnB3", "",
])
def test_bad_token_is_json_401(client, runner, header):
    _token(runner, "ada@example.org", "admin")
    resp = client.get("/api/v1/contacts", headers={"Authorization": header} if header else {})
    assert resp.status_code == 401
    assert resp.is_json and resp.get_json()["error"]


def test_viewer_token_cannot_write(client, runner):
    token = _token(runner, "vera@example.org", "viewer")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/contacts", headers=headers).status_code == 200
    resp = client.post("/api/v1/contacts", headers=headers, json={"email": "someone@example.org"})
    assert resp.status_code == 403
    assert resp.get_json()["error"]


def test_token_for_unknown_user_is_a_clear_error(runner):
    result = runner.invoke(args=["tokens", "create", "ghost@example.org"])
    assert result.exit_code == 1
    assert "Error: no user ghost@example.org" in result.output
