"""Thin actors: check the arguments, call one service. Running one twice must be safe."""
import dramatiq

from envoi.errors import EnvoiError


@dramatiq.actor(queue_name="imports", max_retries=3, time_limit=6 * 3600 * 1000, throws=(EnvoiError, ValueError))
def run_import(job_id: int) -> None:
    """Run a queued CSV import (idempotent: a finished job is not run again)."""
    if not isinstance(job_id, int) or job_id <= 0:
        raise ValueError(f"bad job id {job_id!r}")
    from contacts.importer import run_import_job

    run_import_job(job_id)
