"""Per-channel send rates (messages per second and per hour) shared by every worker through Redis.

A GCRA ("generic cell rate algorithm", a token bucket kept as one timestamp) evaluated in a
Lua script with Redis's own clock, so every process and machine sees one bucket and one time.
A caller reserves n messages: the script answers how long to wait before sending them (0 when
they may leave now) and books them, so waiting callers queue in order instead of polling.
A reservation that would wait longer than `max_wait` is refused and books nothing: the caller
puts its messages back for later (an hourly limit can mean a wait of minutes).

Burst tolerance is a tenth of a second's worth for the per-second rate (at least one message)
and a minute's worth for the hourly one, so any window holds the rate within a few percent.
"""
from __future__ import annotations

import threading
import time

import redis
from flask import current_app

# KEYS: one bucket key per limit. ARGV: n, max_wait, then (interval, tolerance) per key.
# Returns {granted (1/0), wait in microseconds, redis time in microseconds}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[1 + 2 * i])
  local tolerance = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + n * interval
  local w = new_tat - now - tolerance - interval
  if w > wait then wait = w end
  tats[i] = new_tat
end
if wait > max_wait then
  return {0, wait, now}
end
for i, key in ipairs(KEYS) do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', key, tostring(tats[i]), 'PX', ttl)
end
return {1, wait, now}
"""

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def redis_client(url: str | None = None) -> redis.Redis:
    """One client (a thread-safe connection pool) per process and URL."""
    url = url or current_app.config["REDIS_URL"]
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.setdefault(url, redis.Redis.from_url(url))
    return client


class Reservation:
    """The answer of the bucket: granted or not, the wait (seconds), Redis time (seconds)."""

    __slots__ = ("granted", "wait", "at")

    def __init__(self, granted: bool, wait: float, at: float):
        self.granted, self.wait, self.at = granted, wait, at

    @property
    def send_at(self) -> float:
        """Redis time at which the reserved messages may leave."""
        return self.at + self.wait


class RateLimiter:
    """Messages per second and per hour for one channel; 0 means unlimited."""

    def __init__(self, client: redis.Redis, channel: str, per_second: float = 0, per_hour: float = 0,
                 prefix: str = "envoi:rate"):
        self.client = client
        self.limits = []  # (key, interval µs, tolerance µs)
        if per_second and per_second > 0:
            interval = 1_000_000 / per_second
            self.limits.append((f"{prefix}:{channel}:second", interval, max(0.0, 0.1 * 1_000_000 - interval)))
        if per_hour and per_hour > 0:
            interval = 3600 * 1_000_000 / per_hour
            self.limits.append((f"{prefix}:{channel}:hour", interval, max(0.0, 60 * 1_000_000 - interval)))
        self._script = client.register_script(_GCRA) if self.limits else None

    @property
    def unlimited(self) -> bool:
        return not self.limits

    @property
    def chunk(self) -> int:
        """Messages to reserve at once: one Redis round trip per chunk, within the burst allowed."""
        if not self.limits:
            return 1_000_000
        return max(1, int(min((tolerance + interval) / interval for _, interval, tolerance in self.limits) / 2))

    def reserve(self, n: int = 1, max_wait: float = float("inf")) -> Reservation:
        """Book n messages unless they would wait longer than max_wait seconds."""
        if not self.limits:
            return Reservation(True, 0.0, time.time())
        max_wait_us = int(min(max_wait, 10 * 365 * 86400) * 1_000_000)
        args = [n, max_wait_us]
        for _, interval, tolerance in self.limits:
            args += [repr(float(interval)), repr(float(tolerance))]
        granted, wait, now = self._script(keys=[key for key, _, _ in self.limits], args=args)
        return Reservation(bool(granted), max(0, int(wait)) / 1_000_000, int(now) / 1_000_000)

    def acquire(self, n: int = 1, max_wait: float = float("inf")) -> bool:
        """Block until n messages may leave (True); False, without booking, if that is over max_wait."""
        reservation = self.reserve(n, max_wait)
        if not reservation.granted:
            return False
        if reservation.wait > 0:
            time.sleep(reservation.wait)
        return True


def limiter(channel: str) -> RateLimiter:
    """The shared limiter of a channel ("email" or "sms") from the app's configuration."""
    cfg = current_app.config
    key = channel.upper()
    per_second = cfg.get(f"{key}_RATE_PER_SECOND") or 0
    per_hour = cfg.get(f"{key}_RATE_PER_HOUR") or 0
    cache_key = (cfg["REDIS_URL"], channel, per_second, per_hour)
    found = _limiters.get(cache_key)
    if found is None:
        client = redis_client(cfg["REDIS_URL"]) if (per_second or per_hour) else None
        found = _limiters.setdefault(cache_key, RateLimiter(client, channel, per_second, per_hour)
                                     if client is not None else _UNLIMITED)
    return found


class _Unlimited(RateLimiter):
    def __init__(self):
        self.limits = []
        self._script = None


_UNLIMITED = _Unlimited()
_limiters: dict = {}
