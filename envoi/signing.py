"""Compact signed tokens for the links of every message: one HMAC, no JSON, no zlib.

    token = base64url(VERSION | payload | mac), mac = HMAC-SHA256(key, VERSION | payload)[:16]
    key   = HMAC-SHA256(SECRET_KEY, "envoi.signing.v2:" + purpose)

One key per purpose, so a token made for one thing opens nothing else. The payload is a few
integers (a length byte, then the value big-endian in as few bytes as it takes) and, for some
purposes, a tail of bytes (a URL). A token costs one HMAC of a few dozen bytes (~1 µs) where
itsdangerous's serializer costs a JSON dump, a zlib attempt and two HMAC objects (~50 µs): a
campaign message carries four of them.

These tokens never contain '.', those of itsdangerous always do: readers that must still accept
links already sent in the old format tell them apart by that (`is_compact`).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import re

VERSION = b"\x02"
MAC_SIZE = 16
MAX_INT = 2**63 - 1
_SHAPE = re.compile(r"[A-Za-z0-9_-]+")
_KEYS: dict = {}


class BadToken(Exception):
    """Tampered, truncated, signed for another purpose, or of the wrong shape."""


def _key(secret: str, purpose: str) -> bytes:
    key = _KEYS.get((secret, purpose))
    if key is None:
        key = _KEYS[(secret, purpose)] = hmac.digest(secret.encode(), f"envoi.signing.v2:{purpose}".encode(),
                                                     "sha256")
    return key


def pack_ints(*values: int) -> bytes:
    """Each value (0 <= v <= 2**63 - 1): its length in one byte, then its bytes, big-endian."""
    out = []
    for value in values:
        if not 0 <= value <= MAX_INT:
            raise ValueError(f"{value!r} out of range")
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        out.append(len(raw).to_bytes(1, "big") + raw)
    return b"".join(out)


def unpack_ints(data: bytes, count: int) -> tuple[list[int], bytes]:
    """`count` integers written by pack_ints, and the bytes after them; BadToken if malformed."""
    values, at = [], 0
    for _ in range(count):
        if at >= len(data):
            raise BadToken("truncated")
        size = data[at]
        raw = data[at + 1:at + 1 + size]
        if size > 8 or len(raw) != size or (size and raw[0] == 0):  # one spelling per value
            raise BadToken("bad integer")
        values.append(int.from_bytes(raw, "big"))
        at += 1 + size
    return values, data[at:]


def sign(secret: str, purpose: str, payload: bytes) -> str:
    body = VERSION + payload
    mac = hmac.digest(_key(secret, purpose), body, "sha256")[:MAC_SIZE]
    return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")


def unsign(secret: str, purpose: str, token: str) -> bytes:
    """The payload of a token signed for `purpose` with `secret`; BadToken otherwise."""
    if not isinstance(token, str) or len(token) % 4 == 1 or not _SHAPE.fullmatch(token):
        raise BadToken("bad shape")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BadToken("bad encoding") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise BadToken("bad encoding")  # one spelling per token: the last character's spare bits are zero
    if len(raw) <= len(VERSION) + MAC_SIZE or not raw.startswith(VERSION):
        raise BadToken("bad version")
    body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.digest(_key(secret, purpose), body, "sha256")[:MAC_SIZE]):
        raise BadToken("bad signature")
    return body[len(VERSION):]


def is_compact(token: str) -> bool:
    """A token of this module rather than an itsdangerous one (those always hold a '.')."""
    return "." not in token
