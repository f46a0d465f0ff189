"""SMS specifics: GSM-7 / UCS-2 encoding and segment count, quiet hours in the recipient's timezone.

A message that fits the GSM 03.38 alphabet travels as 7-bit septets: 160 per single message,
153 per part once it is split (the rest carries the concatenation header); the extension table
characters (``^{}\\[~]|€`` and form feed) take two septets and are never split across parts.
Anything else forces UCS-2: 70 UTF-16 code units, 67 per part, and an emoji (outside the BMP)
takes two units that stay together.
"""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

DEFAULT_TZ = "Europe/Paris"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _pack(costs: list[int], single: int, part: int) -> int:
    """Parts needed for units of the given costs; a multi-unit character is never split."""
    total = sum(costs)
    if total == 0:
        return 0
    if total <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:
            parts, used = parts + 1, 0
        used += cost
    return parts


def sms_info(text: str) -> dict:
    """{"encoding": "GSM-7"|"UCS-2", "characters": n, "segments": n, "units": septets or UTF-16 units}.

    `characters` is what a person counts; `units` what the network counts.
    """
    text = text or ""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        encoding, single, part = "GSM-7", 160, 153
    else:
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
        encoding, single, part = "UCS-2", 70, 67
    return {"encoding": encoding, "characters": len(text), "units": sum(costs),
            "segments": _pack(costs, single, part)}


# ---------------------------------------------------------------- quiet hours

@lru_cache(maxsize=512)
def zone(name: str | None) -> ZoneInfo:
    """The recipient's timezone; Europe/Paris when unknown or invalid."""
    if name:
        try:
            return ZoneInfo(name)
        except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError on odd strings
            pass
    return ZoneInfo(DEFAULT_TZ)


def _hm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _rules(quiet_hours, quiet_days) -> tuple[tuple[time, time] | None, frozenset[int]]:
    if quiet_hours is None and quiet_days is None and has_app_context():
        quiet_hours = current_app.config.get("SMS_QUIET_HOURS")
        quiet_days = current_app.config.get("SMS_QUIET_DAYS") or ()
    hours = (_hm(quiet_hours[0]), _hm(quiet_hours[1])) if quiet_hours else None
    days = frozenset(DAYS.index(d) for d in (quiet_days or ()))
    return hours, days


def next_allowed_time(now_utc: datetime, tz: str | None, *, quiet_hours=None, quiet_days=None) -> datetime:
    """`now_utc` when outside quiet hours and days in the recipient's timezone, else the start of the
    next allowed slot (UTC). Rules come from SMS_QUIET_HOURS / SMS_QUIET_DAYS unless given.

    Quiet hours may cross midnight ("20:30"-"08:00"); a quiet day is quiet from 00:00 to 24:00 local.
    A naive `now_utc` is taken as UTC and the answer is naive too.
    """
    hours, days = _rules(quiet_hours, quiet_days)
    naive = now_utc.tzinfo is None
    start_utc = now_utc.replace(tzinfo=timezone.utc) if naive else now_utc.astimezone(timezone.utc)
    if hours is None and not days:
        return now_utc
    if len(days) == 7:
        raise ValueError("every day is quiet: SMS could never be sent")
    zi = zone(tz)
    local = start_utc.astimezone(zi)
    for _ in range(32):
        day = local.date()
        if local.weekday() in days:
            local = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zi)
            continue
        if hours is not None:
            begin, end = hours
            now_t = local.time().replace(tzinfo=None)
            if begin > end:  # crosses midnight
                if now_t >= begin:
                    local = datetime.combine(day + timedelta(days=1), end, tzinfo=zi)
                    continue
                if now_t < end:
                    local = datetime.combine(day, end, tzinfo=zi)
                    continue
            elif begin <= now_t < end:
                local = datetime.combine(day, end, tzinfo=zi)
                continue
        break
    # Round trip through UTC normalises a wall time that does not exist (spring forward).
    result = local.astimezone(timezone.utc)
    if result == start_utc:
        return now_utc
    return result.replace(tzinfo=None) if naive else result
