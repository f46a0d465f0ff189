"""The shared rate limiter (GCRA in Redis): counts of messages granted, by Redis time."""
from __future__ import annotations

import threading

import redis

from campaigns.ratelimit import RateLimiter


def _limiter(redis_url, prefix, **limits):
    return RateLimiter(redis.Redis.from_url(redis_url), "email", prefix=prefix, **limits)


def test_two_workers_share_one_rate_held_within_5_percent(redis_url):
    """Two threads, each with its own Redis connection (as two worker processes would have),
    take messages from one 200/s limit for about 1.5 s. Every grant is stamped with the Redis
    time at which it may leave; the count in that span is the rate the limiter held."""
    rate, per_thread = 200.0, 150
    prefix = "test:rate:shared"
    redis.Redis.from_url(redis_url).delete(f"{prefix}:email:second")
    stamps: list[float] = []
    lock = threading.Lock()

    def work():
        mine = _limiter(redis_url, prefix, per_second=rate)
        for _ in range(per_thread):
            reservation = mine.reserve(1)
            assert reservation.granted
            with lock:
                stamps.append(reservation.send_at)
            if reservation.wait > 0:
                threading.Event().wait(reservation.wait)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    burst = int(rate * 0.1)  # the tolerance: a tenth of a second's worth may leave at once
    span = stamps[-1] - stamps[burst]
    held = (len(stamps) - 1 - burst) / span
    print(f"held {held:.1f}/s for a limit of {rate:.0f}/s over {span:.2f} s (Redis time)")
    assert abs(held - rate) / rate <= 0.05
    # And no one-second window (by Redis time) ever holds more than the rate plus the burst.
    j = 0
    for i, start in enumerate(stamps):
        while j < len(stamps) and stamps[j] < start + 1.0:
            j += 1
        assert j - i <= rate + burst


def test_hourly_limit_refuses_what_would_wait_too_long_and_books_nothing(redis_url):
    prefix = "test:rate:hourly"
    redis.Redis.from_url(redis_url).delete(f"{prefix}:sms:hour")
    hourly = RateLimiter(redis.Redis.from_url(redis_url), "sms", per_hour=120, prefix=prefix)
    # A minute's worth (2) may go at once, then one every 30 s.
    granted = [hourly.reserve(1, max_wait=1.0) for _ in range(4)]
    assert [r.granted for r in granted] == [True, True, False, False]
    assert 25 < granted[2].wait <= 30
    # The refusals booked nothing: the next one is told the same wait.
    assert abs(hourly.reserve(1, max_wait=1.0).wait - granted[2].wait) < 1


def test_unlimited_needs_no_redis():
    free = RateLimiter(None, "email")
    assert free.unlimited and free.reserve(10_000).granted and free.reserve(1).wait == 0
