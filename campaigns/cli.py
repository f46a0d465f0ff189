"""`flask campaigns ...`."""
import click
from flask.cli import AppGroup

campaigns_cli = AppGroup("campaigns", help="Campaigns: send.")


@campaigns_cli.command("send")
@click.argument("campaign_id", type=int)
@click.option("--at", "at", default=None, help="ISO 8601 time to schedule it for (UTC when no offset); now if absent.")
def send(campaign_id: int, at: str | None) -> None:
    """Send campaign ID now, or schedule it (same as POST /api/v1/campaigns/ID/send)."""
    from campaigns import dispatch
    from contacts.validation import parse_datetime
    from envoi.errors import EnvoiError
    from envoi.extensions import db

    try:
        when = parse_datetime(at, "at") if at else None
        campaign = dispatch.launch(campaign_id, at=when)
    except EnvoiError as err:
        db.session.rollback()
        details = "; ".join(f"{k}: {v}" for k, v in err.fields.items())
        click.echo(f"error: {err.message}" + (f" ({details})" if details else ""), err=True)
        raise SystemExit(1) from None
    if campaign.status == "scheduled":
        click.echo(f"campaign {campaign.id} scheduled for {campaign.send_at.isoformat()}")
    else:
        click.echo(f"campaign {campaign.id} {campaign.status}: {campaign.targeted} recipient(s)")
