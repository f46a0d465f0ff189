"""Thin actors of campaign dispatch (batches, scheduling, re-enqueue of lost work)."""
import dramatiq
from periodiq import cron

from envoi.errors import EnvoiError


def _check_id(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise ValueError(f"bad {name} {value!r}")


# A batch stops itself well before its lease ends (dispatch.deliver_batch); the time limit only
# catches a send that hangs, and its rows are reclaimed after the lease.
@dramatiq.actor(queue_name="campaigns", max_retries=3, time_limit=6 * 3600 * 1000,
                throws=(EnvoiError, ValueError))
def deliver_batch(campaign_id: int, lo: int, hi: int) -> None:
    """Send the due queued deliveries of ids [lo, hi] of a campaign (safe to run twice)."""
    _check_id(campaign_id, "campaign id")
    _check_id(lo, "first delivery id")
    _check_id(hi, "last delivery id")
    from campaigns.dispatch import deliver_batch as deliver

    deliver(campaign_id, lo, hi)


@dramatiq.actor(periodic=cron("* * * * *"), max_retries=0)
def requeue_campaigns() -> None:
    """Every minute: start due scheduled campaigns, reclaim expired leases, re-enqueue lost batches."""
    from campaigns.dispatch import requeue_due

    requeue_due()
