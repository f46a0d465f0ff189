"""`flask campaigns send`."""
from datetime import datetime, timedelta, timezone

from campaigns.models import Campaign
from envoi.extensions import db


def _campaign(app) -> int:
    from contacts.services import create_topic

    with app.app_context():
        topic = create_topic("news", "News")
        campaign = Campaign(name="c", channel="email", topic_id=topic.id, subject="s", text="t")
        db.session.add(campaign)
        db.session.commit()
        return campaign.id


def test_send_schedules_and_reports(app):
    cid = _campaign(app)
    at = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    result = app.test_cli_runner().invoke(args=["campaigns", "send", str(cid), "--at", at])
    assert result.exit_code == 0, result.output
    assert f"campaign {cid} scheduled for" in result.output


def test_errors_are_one_clear_line(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["campaigns", "send", "999999"])
    assert result.exit_code == 1 and "error: campaign not found" in result.output
    assert "Traceback" not in result.output
    cid = _campaign(app)
    result = runner.invoke(args=["campaigns", "send", str(cid), "--at", "soon"])
    assert result.exit_code == 1 and "at: expected an ISO 8601 time" in result.output
