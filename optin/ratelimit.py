"""Signup throttles in one Redis round trip: the per-IP windows, the per-address windows and the
forms' version (see services.signup_form), by one small Lua script.

Fixed windows: a counter per (rate, identity) that expires `window` seconds after its first hit.
The per-IP counters count every signup POST; an address's counters count only the confirmation
messages allowed (a refused one does not extend its window). Keys live under flask-limiter's
"LIMITS:" prefix, so `limiter.reset()` clears them too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import redis
from flask import current_app
from limits import parse_many

FORMS_VERSION_KEY = "envoi:optin:forms-version"
_PREFIX = "LIMITS:optin"

# KEYS[1]: forms version; then the IP window keys, then each address's window keys.
# ARGV[1]: number of IP keys; ARGV[2]: windows per address; then (amount, seconds) for every key.
_SCRIPT = """
local n_ip, per_address = tonumber(ARGV[1]), tonumber(ARGV[2])
local version = redis.call('GET', KEYS[1]) or '0'
local function limit_of(i) return tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i]) end
local retry = 0
for i = 1, n_ip do
  local key = KEYS[1 + i]
  local amount, seconds = limit_of(i)
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('EXPIRE', key, seconds) end
  if count > amount then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = 1 end
    if ttl > retry then retry = ttl end
  end
end
local allowed = {}
if retry > 0 then return {version, retry, allowed} end
local i = n_ip + 1
while i + 1 <= #KEYS do
  local ok = 1
  for j = 0, per_address - 1 do
    local amount = limit_of(i + j)
    if tonumber(redis.call('GET', KEYS[1 + i + j]) or '0') >= amount then ok = 0 end
  end
  if ok == 1 then
    for j = 0, per_address - 1 do
      local key = KEYS[1 + i + j]
      local _, seconds = limit_of(i + j)
      if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, seconds) end
    end
  end
  table.insert(allowed, ok)
  i = i + per_address
end
return {version, retry, allowed}
"""


@dataclass
class Outcome:
    version: int
    retry_after: int  # seconds; 0 when the IP is under its limits
    allowed: dict = field(default_factory=dict)  # (kind, address) -> bool


@lru_cache(maxsize=32)
def _windows(rate: str) -> tuple[tuple[int, int], ...]:
    return tuple((item.amount, item.get_expiry()) for item in parse_many(rate))


def client() -> redis.Redis:
    """This app's Redis (the rate limiter's), one pool per app."""
    app = current_app._get_current_object()
    conn = app.extensions.get("envoi_optin_redis")
    if conn is None:
        conn = app.extensions["envoi_optin_redis"] = redis.Redis.from_url(app.config["RATELIMIT_STORAGE_URI"])
    return conn


def _script(conn: redis.Redis):
    script = getattr(conn, "_envoi_throttle", None)
    if script is None:
        script = conn._envoi_throttle = conn.register_script(_SCRIPT)
    return script


def hit(ip: str | None, addresses: list[tuple[str, str]]) -> Outcome:
    """Count one signup POST from `ip` (None: not counted) and, if the IP is under its limits, one
    confirmation message to each (kind, address) that is under its own. One round trip."""
    config = current_app.config
    ip_windows = _windows(config["SIGNUP_RATE_PER_IP"]) if ip is not None else ()
    address_windows = _windows(config["SIGNUP_RATE_PER_ADDRESS"])
    keys, args = [FORMS_VERSION_KEY], [len(ip_windows), len(address_windows)]
    for amount, seconds in ip_windows:
        keys.append(f"{_PREFIX}:ip:{amount}/{seconds}:{ip}")
        args += [amount, seconds]
    for kind, address in addresses:
        for amount, seconds in address_windows:
            keys.append(f"{_PREFIX}:address:{amount}/{seconds}:{kind}:{address}")
            args += [amount, seconds]
    version, retry, allowed = _script(client())(keys=keys, args=args)
    return Outcome(int(version), int(retry), {pair: bool(ok) for pair, ok in zip(addresses, allowed)})


def forms_version() -> int:
    return int(client().get(FORMS_VERSION_KEY) or 0)


def bump_forms_version() -> None:
    """A form changed: every process reloads it at its next signup."""
    client().incr(FORMS_VERSION_KEY)
