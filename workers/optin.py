"""Thin actors of the opt-in side (confirmation messages, expiry of unconfirmed signups)."""
import dramatiq
from periodiq import cron

from campaigns.channels import PermanentError
from envoi.errors import EnvoiError


@dramatiq.actor(queue_name="optin", max_retries=8, min_backoff=5_000, max_backoff=600_000,
                throws=(PermanentError, EnvoiError, ValueError))
def send_confirmation(contact_id: int, channel: str, form_id, lang: str) -> None:
    """Send the double opt-in email or SMS of a pending signup (skipped once confirmed or gone)."""
    if not isinstance(contact_id, int) or contact_id <= 0 or channel not in ("email", "sms") \
            or not (form_id is None or isinstance(form_id, int)) or not isinstance(lang, str):
        raise ValueError(f"bad arguments {contact_id!r} {channel!r} {form_id!r} {lang!r}")
    from optin.services import send_confirmation as send

    send(contact_id, channel, form_id, lang)


@dramatiq.actor(queue_name="optin", periodic=cron("17 3 * * *"), max_retries=0)
def expire_pending_signups() -> None:
    """Daily: signups unconfirmed after ENVOI_OPTIN_PENDING_DAYS lose their personal data."""
    from optin.services import expire_pending_signups as expire

    expire()
