"""Thin actor of tracking: the drainer of buffered opens and clicks."""
import dramatiq
from periodiq import cron


@dramatiq.actor(queue_name="tracking", periodic=cron("* * * * *"), max_retries=0, time_limit=90_000)
def drain_tracking_hits() -> None:
    """Every minute, for most of it: write the opens and clicks the public routes buffered in Redis
    to message_events, in batches (safe to run twice at once: each hit is written once)."""
    from campaigns.tracking import drain_for

    drain_for(55)
