"""CLI wiring: `flask users ...`, `flask tokens ...`, and each domain's groups."""
from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from envoi.errors import EnvoiError

users_cli = AppGroup("users", help="Staff users.")
tokens_cli = AppGroup("tokens", help="API tokens.")


def fail(err: EnvoiError) -> None:
    detail = "; ".join(f"{k}: {v}" for k, v in err.fields.items())
    raise click.ClickException(f"{err.message}" + (f" ({detail})" if detail else ""))


@users_cli.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "marketer", "viewer"]), required=True)
@click.option("--password", default=None, help="At least 10 characters; generated when omitted.")
@click.option("--if-no-admin", is_flag=True, help="Do nothing when an admin already exists (used by make run).")
def create_user_cmd(email, role, password, if_no_admin):
    """Create a staff user; prints the password when it was generated."""
    from envoi.auth.services import any_admin_exists, create_user

    if if_no_admin and any_admin_exists():
        click.echo("an admin user exists already; nothing to do")
        return
    try:
        user, pw = create_user(email, role, password)
    except EnvoiError as err:
        fail(err)
    click.echo(f"created {role} {user.email}")
    if password is None:
        click.echo(f"password (shown once): {pw}")


@tokens_cli.command("create")
@click.argument("email")
@click.option("--name", default="default")
def create_token_cmd(email, name):
    """Create an API token; the token is printed on the last line, once."""
    from envoi.auth.services import create_token

    try:
        token, clear = create_token(email, name)
    except EnvoiError as err:
        fail(err)
    click.echo(f"token {token.id} '{token.name}' for {email} (shown once):")
    click.echo(clear)


def register_cli(app: Flask) -> None:
    from contacts.cli import contacts_cli

    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(contacts_cli)
