"""Signed tokens, one salt per purpose, so a token made for one thing opens nothing else.

    confirm      double opt-in link: contact, channel, topics, form; expires
                 (ENVOI_OPTIN_TOKEN_MAX_AGE)
    unsubscribe  per contact and channel, in every message; never expires
    preferences  per contact, the preference centre; never expires

Tokens are signed with ENVOI_SECRET_KEY (HMAC); a tampered token, one signed for another purpose,
or one whose payload has the wrong shape is a TokenInvalid. An expired confirm token is a
TokenExpired that still carries its payload, so the page can offer a new link.

The confirm token is itsdangerous's. Unsubscribe and preferences tokens, in every campaign message,
are compact ones (envoi.signing: one HMAC over a few bytes, ~50 times cheaper to make); those sent
before in itsdangerous's format (they hold a '.') are still read.
"""
from __future__ import annotations

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from envoi import signing

SALTS = {
    "confirm": "envoi.optin.confirm.v1",
    "unsubscribe": "envoi.unsubscribe.v1",
    "preferences": "envoi.preferences.v1",
}
CHANNELS = ("email", "sms")
_CHANNEL_BYTES = {"email": b"e", "sms": b"s"}
_BYTE_CHANNELS = {v: k for k, v in _CHANNEL_BYTES.items()}


class TokenInvalid(Exception):
    """Tampered, truncated, signed for another purpose, or of the wrong shape."""


class TokenExpired(TokenInvalid):
    def __init__(self, payload):
        super().__init__("token expired")
        self.payload = payload


def _timed(purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SALTS[purpose])


def _plain(purpose: str) -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=SALTS[purpose])


# ---------------------------------------------------------------- confirm (expires)

def confirm_token(contact_id: int, channel: str, topic_ids: list[int], form_id: int | None) -> str:
    if channel not in CHANNELS:
        raise ValueError(f"bad channel {channel!r}")
    return _timed("confirm").dumps([int(contact_id), channel, sorted(int(t) for t in topic_ids), form_id])


def read_confirm_token(token: str, max_age: int | None = None) -> dict:
    """{"contact_id", "channel", "topic_ids", "form_id"}; raises TokenExpired / TokenInvalid."""
    max_age = current_app.config["OPTIN_TOKEN_MAX_AGE"] if max_age is None else max_age
    serializer = _timed("confirm")
    try:
        payload = serializer.loads(token, max_age=max_age)
    except SignatureExpired as err:
        raise TokenExpired(_confirm_payload(err.payload and serializer.load_payload(err.payload))) from None
    except BadSignature:
        raise TokenInvalid("bad signature") from None
    return _confirm_payload(payload)


def _confirm_payload(payload) -> dict:
    if (not isinstance(payload, list) or len(payload) != 4 or not isinstance(payload[0], int)
            or payload[1] not in CHANNELS or not isinstance(payload[2], list)
            or not all(isinstance(t, int) for t in payload[2])
            or not (payload[3] is None or isinstance(payload[3], int))):
        raise TokenInvalid("bad payload")
    return {"contact_id": payload[0], "channel": payload[1], "topic_ids": payload[2], "form_id": payload[3]}


# ---------------------------------------------------------------- unsubscribe / preferences (never expire)

def _secret() -> str:
    return current_app.config["SECRET_KEY"]


def _compact(purpose: str, token: str, ints: int) -> tuple[list[int], bytes]:
    try:
        values, rest = signing.unpack_ints(signing.unsign(_secret(), SALTS[purpose], token), ints)
    except signing.BadToken as err:
        raise TokenInvalid(str(err)) from None
    return values, rest


def unsubscribe_token(contact_id: int, channel: str) -> str:
    if channel not in CHANNELS:
        raise ValueError(f"bad channel {channel!r}")
    return signing.sign(_secret(), SALTS["unsubscribe"], signing.pack_ints(int(contact_id)) + _CHANNEL_BYTES[channel])


def read_unsubscribe_token(token: str) -> tuple[int, str]:
    if signing.is_compact(token):
        (contact_id,), rest = _compact("unsubscribe", token, 1)
        if rest not in _BYTE_CHANNELS:
            raise TokenInvalid("bad payload")
        return contact_id, _BYTE_CHANNELS[rest]
    try:  # sent before the compact tokens
        payload = _plain("unsubscribe").loads(token)
    except BadSignature:
        raise TokenInvalid("bad signature") from None
    if (not isinstance(payload, list) or len(payload) != 2 or not isinstance(payload[0], int)
            or payload[1] not in CHANNELS):
        raise TokenInvalid("bad payload")
    return payload[0], payload[1]


def preferences_token(contact_id: int) -> str:
    return signing.sign(_secret(), SALTS["preferences"], signing.pack_ints(int(contact_id)))


def read_preferences_token(token: str) -> int:
    if signing.is_compact(token):
        (contact_id,), rest = _compact("preferences", token, 1)
        if rest:
            raise TokenInvalid("bad payload")
        return contact_id
    try:  # sent before the compact tokens
        payload = _plain("preferences").loads(token)
    except BadSignature:
        raise TokenInvalid("bad signature") from None
    if not isinstance(payload, int) or isinstance(payload, bool):
        raise TokenInvalid("bad payload")
    return payload


def _url(path: str) -> str:
    return f"{current_app.config['BASE_URL']}{path}"


def confirm_url(token: str) -> str:
    return _url(f"/confirm/{token}")


def unsubscribe_url(contact_id: int, channel: str, campaign_id: int | None = None) -> str:
    """The one-click target; `?c=` (unsigned, attribution only) names the campaign that carried it."""
    suffix = f"?c={int(campaign_id)}" if campaign_id else ""
    return _url(f"/unsubscribe/{unsubscribe_token(contact_id, channel)}{suffix}")


def preferences_url(contact_id: int) -> str:
    return _url(f"/preferences/{preferences_token(contact_id)}")
