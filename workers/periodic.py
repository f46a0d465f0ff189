"""Periodic actors run by the scheduler process (`periodiq workers`)."""
import dramatiq
from periodiq import cron


@dramatiq.actor(periodic=cron("* * * * *"), max_retries=0)
def requeue_lost_imports() -> None:
    """The database is the source of truth: re-enqueue imports the broker lost."""
    from contacts.importer import requeue_stale_jobs

    requeue_stale_jobs()
