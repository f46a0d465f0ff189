"""Thin actors of automation: the scheduler's tick and the step runner."""
from datetime import datetime

import dramatiq
from periodiq import cron

from envoi.errors import EnvoiError


@dramatiq.actor(queue_name="automation", max_retries=3, time_limit=3600 * 1000, throws=(EnvoiError, ValueError))
def advance_runs(lo: int, hi: int, at: str) -> None:
    """Take the due steps of journey runs of ids [lo, hi] (safe to run twice: runs are claimed)."""
    for value in (lo, hi):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
            raise ValueError(f"bad run id {value!r}")
    when = datetime.fromisoformat(at) if isinstance(at, str) else None
    if when is None or when.tzinfo is None:
        raise ValueError(f"bad time {at!r}")
    from automation.engine import advance_batch

    advance_batch(lo, hi, when)


@dramatiq.actor(queue_name="automation", periodic=cron("* * * * *"), max_retries=0)
def automation_tick() -> None:
    """Every minute: exits, enrollment by triggers, enqueue of due (or lost) journey steps."""
    from automation.engine import tick

    tick()
