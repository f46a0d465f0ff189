"""SMS: GSM-7 / UCS-2 and segments, the opt-out mention, quiet hours in the recipient's timezone."""
from datetime import datetime, timezone

import pytest

from campaigns.models import Campaign
from campaigns.rendering import compiled
from campaigns.sms import next_allowed_time, sms_info
from contacts.models import Contact
from envoi.types import utcnow
from tests.conftest import configured


@pytest.mark.parametrize("text, encoding, units, segments", [
    ("", "GSM-7", 0, 0),
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("Offre à 10€ {code} !", "GSM-7", 23, 1),    # € { } from the extension table count two
    ("€" * 80, "GSM-7", 160, 1),
    ("€" * 81, "GSM-7", 162, 2),
    ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),  # an escape pair is never split across parts
    ("Fête", "UCS-2", 4, 1),                         # ê is not in GSM 03.38
    ("ê" * 70, "UCS-2", 70, 1),
    ("ê" * 71, "UCS-2", 71, 2),
    ("😀" * 35, "UCS-2", 70, 1),                     # an emoji takes two UTF-16 units
    ("😀" * 36, "UCS-2", 72, 2),
    ("a" * 66 + "😀" + "a" * 66, "UCS-2", 134, 3),   # ... that stay in one part
])
def test_encoding_and_segments(text, encoding, units, segments):
    info = sms_info(text)
    assert (info["encoding"], info["units"], info["segments"], info["characters"]) == \
        (encoding, units, segments, len(text))


def _campaign(body):
    return Campaign(id=5000 + len(body), name="s", channel="sms", body=body, updated_at=utcnow())


def _contact(**values):
    return Contact(id=7, phone="+33612345678", first_name="Léa", tags=[], attributes={}, lifecycle="prospect",
                   email_status="none", sms_status="confirmed", purchase_count=0, purchase_total=0, **values)


def test_opt_out_mention_is_appended_once(app, ctx):
    with configured(app, SMS_OPTOUT_TEXT="STOP au 36111"):
        assert compiled(_campaign("Soldes {{ contact.first_name }} !")).sms(_contact()) == \
            "Soldes Léa !\nSTOP au 36111"
        assert compiled(_campaign("Soldes. Stop au 36111")).sms(_contact()) == "Soldes. Stop au 36111"
    with configured(app, SMS_OPTOUT_TEXT=""):
        assert compiled(_campaign("Hi {{ contact.first_name | default('toi') }}")).sms(_contact()) == "Hi Léa"


UTC = timezone.utc
RULES = {"quiet_hours": ("20:30", "08:00"), "quiet_days": ("sun",)}


@pytest.mark.parametrize("now, tz, expected", [
    (datetime(2025, 3, 11, 12, 0, tzinfo=UTC), "Europe/Paris", None),                # Tue 13:00 Paris
    (datetime(2025, 3, 11, 19, 29, tzinfo=UTC), "Europe/Paris", None),               # 20:29 Paris
    (datetime(2025, 3, 11, 19, 30, tzinfo=UTC), "Europe/Paris", datetime(2025, 3, 12, 7, 0, tzinfo=UTC)),
    (datetime(2025, 3, 11, 23, 30, tzinfo=UTC), "Europe/Paris", datetime(2025, 3, 12, 7, 0, tzinfo=UTC)),  # 00:30
    (datetime(2025, 3, 12, 5, 0, tzinfo=UTC), None, datetime(2025, 3, 12, 7, 0, tzinfo=UTC)),  # default Paris
    (datetime(2025, 3, 12, 5, 0, tzinfo=UTC), "Not/AZone", datetime(2025, 3, 12, 7, 0, tzinfo=UTC)),
    # Saturday 22:00 -> Sunday is quiet -> Monday 08:00 Paris
    (datetime(2025, 3, 15, 21, 0, tzinfo=UTC), "Europe/Paris", datetime(2025, 3, 17, 7, 0, tzinfo=UTC)),
    (datetime(2025, 3, 16, 12, 0, tzinfo=UTC), "Europe/Paris", datetime(2025, 3, 17, 7, 0, tzinfo=UTC)),
    # New York (UTC-4 since 9 March): 07:00 there waits until 08:00 there
    (datetime(2025, 3, 11, 11, 0, tzinfo=UTC), "America/New_York", datetime(2025, 3, 11, 12, 0, tzinfo=UTC)),
    (datetime(2025, 3, 11, 12, 0, tzinfo=UTC), "America/New_York", None),
    # Monday 09:00 in Tokyo is still Sunday night in Paris: allowed for the Tokyo contact
    (datetime(2025, 3, 17, 0, 0, tzinfo=UTC), "Asia/Tokyo", None),
    # Sunday 19:00 in Tokyo: Monday 08:00 Tokyo = Sunday 23:00 UTC
    (datetime(2025, 3, 16, 10, 0, tzinfo=UTC), "Asia/Tokyo", datetime(2025, 3, 16, 23, 0, tzinfo=UTC)),
    # Summer time in Paris (UTC+2): 21:00 local -> 08:00 local = 06:00 UTC
    (datetime(2025, 7, 8, 19, 0, tzinfo=UTC), "Europe/Paris", datetime(2025, 7, 9, 6, 0, tzinfo=UTC)),
])
def test_quiet_hours_and_days(now, tz, expected):
    assert next_allowed_time(now, tz, **RULES) == (expected or now)


def test_quiet_hours_within_a_day_and_off():
    noon = datetime(2025, 3, 11, 11, 30, tzinfo=UTC)  # 12:30 Paris
    assert next_allowed_time(noon, "Europe/Paris", quiet_hours=("12:00", "14:00"), quiet_days=()) == \
        datetime(2025, 3, 11, 13, 0, tzinfo=UTC)
    assert next_allowed_time(noon, "Europe/Paris", quiet_hours=None, quiet_days=()) == noon


def test_rules_come_from_the_config(app, ctx):
    sunday = datetime(2025, 3, 16, 12, 0, tzinfo=UTC)
    with configured(app, SMS_QUIET_HOURS=None, SMS_QUIET_DAYS=()):
        assert next_allowed_time(sunday, "Europe/Paris") == sunday
    with configured(app, SMS_QUIET_HOURS=("20:30", "08:00"), SMS_QUIET_DAYS=("sun",)):
        assert next_allowed_time(sunday, "Europe/Paris") == datetime(2025, 3, 17, 7, 0, tzinfo=UTC)
