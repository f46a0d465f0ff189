"""Open and click tracking: signed tokens, link rewriting, the pixel, SMS short links, bot heuristics.

An email is tracked when its campaign has `track` on and its contact has not refused tracking
(preference centre). Then, once the message is rendered:

    every http(s) link (HTML href and bare URLs of the text part) becomes BASE_URL/t/c/<token>,
    except our own unsubscribe and preference-centre links, and a 1x1 pixel BASE_URL/t/o/<token>.gif
    is added to the HTML.

A token is signed (envoi.signing: one HMAC, its own key per purpose) and carries the campaign, the
contact, the time the message was rendered and, for a click, the URL itself: the redirect goes only
to a URL we wrote into a message, and a forged or altered token is a 404, never a redirect. Each
link has its own MAC over all of that (one HMAC of ~100 bytes, about a microsecond): no part of a
token can be moved to another. Tokens of messages sent before, in itsdangerous's format, are
still read. No lookup is needed to follow a click: recording is one INSERT.

SMS links become BASE_URL/s/<code>; the code is derived from (campaign, contact, url) with an HMAC,
so rendering the same message twice gives the same code, and the row (short_links) is written by
its own transaction before the message leaves. A click is one UPDATE ... RETURNING (the count)
and one INSERT (the event).

Machine events are kept but flagged `is_bot` (rates and engagement segments ignore them):
Apple Mail Privacy Protection prefetches (Apple's 17.0.0.0/8 proxies, its bare "Mozilla/5.0"
user agent), security scanners and link previewers (user agents), and anything that hits the
message within BOT_SECONDS of its sending — a person does not open and click within seconds,
a scanner that fetches every link on arrival does.
"""
from __future__ import annotations

import atexit
import hashlib
import hmac
import html as htmllib
import ipaddress
import json
import os
import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer
from redis.exceptions import RedisError

from campaigns.tracking_models import TrackingDrain
from envoi import signing
from envoi.extensions import db
from envoi.types import utcnow
from envoi.useragents import is_machine

SALTS = {"open": "envoi.tracking.open.v1", "click": "envoi.tracking.click.v1", "short": "envoi.tracking.short.v1",
         "sms": "envoi.tracking.sms.v2"}
BOT_SECONDS = 10          # events this soon after sending are a scanner or a prefetch
MAX_URL = 2000            # longer links are left as they are
PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
         b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.I | re.S)
_URL = re.compile(r"""https?://[^\s<>"'()\[\]]+[^\s<>"'()\[\].,;:!?]""", re.I)
_BODY_END = re.compile(r"</body\s*>", re.I)
_APPLE = ipaddress.ip_network("17.0.0.0/8")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class TokenInvalid(Exception):
    """Tampered, truncated, signed for another purpose, or of the wrong shape."""


# ---------------------------------------------------------------- tokens

_SERIALIZERS: dict = {}


def _serializer(purpose: str) -> URLSafeSerializer:
    key = (current_app.config["SECRET_KEY"], purpose)
    serializer = _SERIALIZERS.get(key)
    if serializer is None:
        serializer = _SERIALIZERS[key] = URLSafeSerializer(key[0], salt=SALTS[purpose])
    return serializer


def _epoch(now: datetime | None) -> int:
    return int((now or utcnow()).timestamp())


def open_token(campaign_id: int, contact_id: int, now: datetime | None = None) -> str:
    return _sign("open", signing.pack_ints(int(campaign_id), int(contact_id), _epoch(now)))


def click_token(campaign_id: int, contact_id: int, url: str, now: datetime | None = None) -> str:
    return _sign("click", signing.pack_ints(int(campaign_id), int(contact_id), _epoch(now)) + url.encode("utf-8"))


def _sign(purpose: str, payload: bytes) -> str:
    return signing.sign(current_app.config["SECRET_KEY"], SALTS[purpose], payload)


def _unsign(purpose: str, token: str) -> tuple[list[int], bytes]:
    """(campaign_id, contact_id, sent epoch) and the rest of a compact token; TokenInvalid otherwise."""
    try:
        ints, rest = signing.unpack_ints(signing.unsign(current_app.config["SECRET_KEY"], SALTS[purpose], token), 3)
    except signing.BadToken as err:
        raise TokenInvalid(str(err)) from None
    if not all(_int(v) for v in ints):
        raise TokenInvalid("bad payload")
    return ints, rest


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def read_open_token(token: str) -> tuple[int, int, int]:
    """(campaign_id, contact_id, sent epoch); TokenInvalid otherwise."""
    if signing.is_compact(token):
        ints, rest = _unsign("open", token)
        if rest:
            raise TokenInvalid("bad payload")
        return ints[0], ints[1], ints[2]
    try:  # itsdangerous's format: pixels of messages sent before the compact tokens
        payload = _serializer("open").loads(token)
    except (BadSignature, UnicodeError, ValueError):
        raise TokenInvalid("bad signature") from None
    if not (isinstance(payload, list) and len(payload) == 3 and all(_int(v) for v in payload)):
        raise TokenInvalid("bad payload")
    return payload[0], payload[1], payload[2]


def read_click_token(token: str) -> tuple[int, int, int, str]:
    """(campaign_id, contact_id, sent epoch, url); TokenInvalid otherwise."""
    if signing.is_compact(token):
        ints, rest = _unsign("click", token)
        try:
            url = rest.decode("utf-8")
        except UnicodeError:
            raise TokenInvalid("bad payload") from None
        if not _trackable(url):
            raise TokenInvalid("bad payload")
        return ints[0], ints[1], ints[2], url
    try:  # itsdangerous's format: links of messages sent before the compact tokens
        payload = _serializer("click").loads(token)
    except (BadSignature, UnicodeError, ValueError):
        raise TokenInvalid("bad signature") from None
    if not (isinstance(payload, list) and len(payload) == 4 and all(_int(v) for v in payload[:3])
            and isinstance(payload[3], str) and _trackable(payload[3])):
        raise TokenInvalid("bad payload")
    return payload[0], payload[1], payload[2], payload[3]


# ---------------------------------------------------------------- rewriting

def _base() -> str:
    return current_app.config["BASE_URL"].rstrip("/")


def _trackable(url: str) -> bool:
    return url.lower().startswith(("http://", "https://")) and len(url) <= MAX_URL and not any(
        c in url for c in "\r\n\x00")


def _ours(url: str, base: str) -> bool:
    """Our own links (unsubscribe, preference centre, tracking) are never wrapped."""
    return url.startswith((f"{base}/unsubscribe/", f"{base}/preferences/", f"{base}/t/", f"{base}/s/"))


def track_email(parts: dict, campaign_id: int, contact_id: int, now: datetime | None = None) -> dict:
    """{"subject", "html", "text"} with links rewritten to click redirects and the pixel added."""
    base = _base()
    secret = current_app.config["SECRET_KEY"]
    head = signing.pack_ints(int(campaign_id), int(contact_id), _epoch(now))
    cache: dict[str, str] = {}

    def wrap(url: str) -> str:
        if not _trackable(url) or _ours(url, base):
            return url
        if url not in cache:
            cache[url] = f"{base}/t/c/{signing.sign(secret, SALTS['click'], head + url.encode('utf-8'))}"
        return cache[url]

    def href(match: re.Match) -> str:
        url = htmllib.unescape(match.group(3)).strip()
        wrapped = wrap(url)
        if wrapped == url:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{htmllib.escape(wrapped)}{match.group(2)}"

    def bare(match: re.Match) -> str:
        return wrap(match.group(0))

    out = dict(parts)
    if parts.get("html"):
        body = _HREF.sub(href, parts["html"])
        pixel = (f'<img src="{base}/t/o/{signing.sign(secret, SALTS["open"], head)}.gif" width="1" height="1" '
                 f'alt="" style="display:block;width:1px;height:1px;border:0" />')
        ends = list(_BODY_END.finditer(body))
        out["html"] = body[:ends[-1].start()] + pixel + body[ends[-1].start():] if ends else body + pixel
    if parts.get("text"):
        out["text"] = _sub_lines_with(_URL, bare, parts["text"], "://")
    return out


def _sub_lines_with(pattern: re.Pattern, repl, text: str, marker: str) -> str:
    """`pattern.sub(repl, text)` for a pattern whose matches all hold `marker` and no line break:
    only the lines with the marker are scanned (a case-insensitive pattern scans a whole message
    slowly; finding the marker is a memchr)."""
    pieces, at = [], 0
    found = text.find(marker)
    while found >= 0:
        start = text.rfind("\n", 0, found) + 1
        end = text.find("\n", found)
        end = len(text) if end < 0 else end
        pieces += [text[at:start], pattern.sub(repl, text[start:end])]
        at = end
        found = text.find(marker, end)
    pieces.append(text[at:])
    return "".join(pieces)


def short_code(campaign_id: int | None, contact_id: int | None, url: str) -> str:
    """The first form of SMS codes (still followed, and used for a message without a contact):
    10 base62 characters (59 bits) from an HMAC, looked up in short_links on each hit."""
    return _b62_mac("short", f"{campaign_id}:{contact_id}:{url}", 10)


# The second form carries what a hit needs, so following it reads nothing: a head character (the lengths
# of the next two fields), the campaign and contact ids, the link's number within the campaign (sms_links)
# and a MAC of all that and of the URL itself. Campaign 1,234 to contact 5,678,901 is 15 characters
# ("E" "Ju" "NpLB" "0" + 7), five more than the first form, told apart by its length (over 10). The URL
# of a link number is cached per process; the MAC covering it, a stale or foreign cache entry never
# redirects anywhere.
SMS_MAC = 7               # base62 characters of the MAC: 41 bits
SMS_LINKS = 62            # numbered links per campaign (one character); more fall back to the first form
_MAX_CAMPAIGN, _MAX_CONTACT = 4, 11   # base62 digits (a head character counts 4 x 11 pairs)
_LINK_URLS: dict = {}


def _b62(n: int, width: int = 0) -> str:
    out = []
    while n or len(out) < max(width, 1):
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
        if width and len(out) == width:
            break
    return "".join(reversed(out)) if not width else "".join(out)


def _b62_mac(salt: str, message: str, width: int) -> str:
    """`width` base62 characters of an HMAC-SHA256 of `message` (the SMS codes, both forms)."""
    key = (current_app.config["SECRET_KEY"] + SALTS[salt]).encode()
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return _b62(int.from_bytes(digest[:8], "big"), width)


def _sms_mac(body: str, url: str) -> str:
    return _b62_mac("sms", f"{body}\n{url}", SMS_MAC)


def sms_code(campaign_id: int, contact_id: int, position: int, url: str) -> str | None:
    """The self-verifying code of link `position` of a campaign's SMS to one contact (None: ids too large)."""
    c, k = _b62(int(campaign_id)), _b62(int(contact_id))
    if len(c) > _MAX_CAMPAIGN or len(k) > _MAX_CONTACT or not 0 <= position < SMS_LINKS:
        return None
    body = _BASE62[(len(c) - 1) * _MAX_CONTACT + len(k) - 1] + c + k + _BASE62[position]
    return body + _sms_mac(body, url)


def read_sms_code(code: str) -> tuple[int, int, int] | None:
    """(campaign_id, contact_id, position) of a code of the second form, its MAC not yet checked."""
    head = _BASE62.find(code[:1])
    if not code or head < 0 or head >= _MAX_CAMPAIGN * _MAX_CONTACT:
        return None
    lc, lk = head // _MAX_CONTACT + 1, head % _MAX_CONTACT + 1
    if len(code) != 1 + lc + lk + 1 + SMS_MAC or not code.isascii() or not code.isalnum():
        return None
    campaign_id, contact_id = _unb62(code[1:1 + lc]), _unb62(code[1 + lc:1 + lc + lk])
    if not (_int(campaign_id) and _int(contact_id)):
        return None
    return campaign_id, contact_id, _BASE62.index(code[1 + lc + lk])


def _unb62(digits: str) -> int:
    n = 0
    for ch in digits:
        n = n * 62 + _BASE62.index(ch)
    return n


def _sms_positions(conn, campaign_id: int, urls: list[str]) -> dict[str, int]:
    """The numbers of these URLs among the campaign's SMS links, new ones numbered (up to SMS_LINKS).
    Only URLs written as they are in the campaign's text: one made for a person (from their data)
    keeps a code of the first form, whose row goes when the person is erased."""
    from campaigns.models import Campaign
    from campaigns.tracking_models import SmsLink

    t = SmsLink.__table__
    template = conn.scalar(sa.select(Campaign.body).where(Campaign.id == campaign_id)) or ""
    hashes = {hashlib.sha256(u.encode()).hexdigest(): u for u in urls if u in template}
    if not hashes:
        return {}
    known: dict[str, int] = {}
    for _ in range(3):  # another worker may number the same campaign's links at the same time
        rows = conn.execute(sa.select(t.c.url_hash, t.c.position).where(
            t.c.campaign_id == campaign_id, t.c.url_hash.in_(list(hashes)))).all()
        known = {hashes[h]: p for h, p in rows}
        missing = [h for h, u in hashes.items() if u not in known]
        if not missing:
            break
        taken = conn.scalar(sa.select(sa.func.count()).where(t.c.campaign_id == campaign_id))
        new = [{"campaign_id": campaign_id, "position": taken + i, "url_hash": h, "url": hashes[h]}
               for i, h in enumerate(missing) if taken + i < SMS_LINKS]
        if not new:
            break
        conn.execute(_insert_ignore(t, conn), new)
    return known


def _insert_ignore(table, conn):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table).on_conflict_do_nothing()
    return sa.insert(table).prefix_with("OR IGNORE")


def shorten_sms(body: str, campaign_id: int | None, contact_id: int | None) -> str:
    """The SMS with its http(s) links replaced by BASE_URL/s/<code>; the rows are written (own transaction)."""
    from campaigns.models import ShortLink

    base = _base()
    urls = list(dict.fromkeys(m.group(0) for m in _URL.finditer(body)
                              if _trackable(m.group(0)) and not _ours(m.group(0), base)))
    if not urls:
        return body
    rows: dict[str, dict] = {}
    # Like the channel's own write: committed before the message leaves, whatever the caller does.
    with db.engine.begin() as conn:
        positions = _sms_positions(conn, campaign_id, urls) if campaign_id and contact_id else {}
        codes = {}
        for url in urls:
            code = None
            if url in positions:
                code = sms_code(campaign_id, contact_id, positions[url], url)
            codes[url] = code or short_code(campaign_id, contact_id, url)
            rows[codes[url]] = {"code": codes[url], "campaign_id": campaign_id, "contact_id": contact_id,
                                "url": url, "clicks": 0, "created_at": utcnow()}
        conn.execute(_insert_ignore(ShortLink.__table__, conn), list(rows.values()))

    def shorten(match: re.Match) -> str:
        url = match.group(0)
        return f"{base}/s/{codes[url]}" if url in codes else url

    return _URL.sub(shorten, body)


# ---------------------------------------------------------------- bots

def is_bot(user_agent: str | None, ip: str | None, sent_epoch: int | None, now: datetime | None = None,
           kind: str = "opened") -> bool:
    """Machine, not a person: a scanner or previewer's user agent, an Apple Mail Privacy Protection
    prefetch (opens from Apple's proxies), or a hit within BOT_SECONDS of the sending."""
    ua = (user_agent or "").strip()
    if is_machine(ua):
        return True
    if sent_epoch is not None and _epoch(now) - sent_epoch < BOT_SECONDS:
        return True
    if kind == "opened":
        if ua == "Mozilla/5.0":  # the MPP proxy's user agent: nothing else sends it bare
            return True
        try:
            if ip and ipaddress.ip_address(ip) in _APPLE:
                return True
        except ValueError:
            pass
    return False


# ---------------------------------------------------------------- recording (the hot path)
#
# A hit does the token check and buffers the event (HitBuffer: in the process, then one RPUSH of
# many to a Redis list, HITS); drain_hits() moves
# them into message_events in batches (one multi-row INSERT each). Exactly once: a batch is first
# moved atomically (a Lua script) from HITS to a key of its own, listed in DRAINING; its rows and
# its name (tracking_drains, primary key) are written in one transaction; only then is the key
# deleted. A drainer that dies leaves the key in DRAINING: the next drain applies it, or finds its
# name already written and only deletes it. Without Redis, buffered hits are written directly.

HITS = "envoi:tracking:hits"
DRAINING = "envoi:tracking:draining"
BATCH = 5000
_TAKE = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return 0 end
redis.call('LTRIM', KEYS[1], #items, -1)
redis.call('SADD', KEYS[3], KEYS[2])
for i = 1, #items, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
end
return #items
"""
_STATEMENTS: dict = {}
_WRITERS: dict = {}
_REDIS: dict = {}


def _redis():
    import redis

    url = current_app.config["REDIS_URL"]
    client = _REDIS.get(url)
    if client is None:
        client = _REDIS[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return client


def _us(when: datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _hit(contact_id: int, campaign_id: int | None, channel: str, kind: str, when: datetime, bot: bool,
         data: dict, code: str | None = None) -> None:
    """Buffer one event: in this process (HitBuffer), then in Redis; written directly when Redis
    cannot take it."""
    row = [contact_id, campaign_id, channel, kind, _us(when), bot, data, code]
    HitBuffer.of(current_app._get_current_object()).add(json.dumps(row, separators=(",", ":")))


def _push(items: list[str]) -> None:
    """Hits (JSON rows) to the Redis list the drainer reads, in one round trip; written directly
    (one INSERT) when Redis cannot take them. Needs the app context."""
    try:
        client = _redis()
        for i in range(0, len(items), 1000):
            client.rpush(HITS, *items[i:i + 1000])
    except RedisError:
        current_app.logger.warning("tracking: Redis unavailable, writing %d events directly", len(items))
        _apply_rows([json.loads(raw) for raw in items])


class HitBuffer:
    """The hits of one app in this process on their way to Redis. A request appends its hit to a
    list and is done; a thread pushes the list with one RPUSH every ENVOI_TRACKING_FLUSH_MS (sooner
    when FLUSH_ITEMS wait). A round trip per hit through the Redis client was most of a hit's CPU.

    A process that exits (a gunicorn worker stopped or restarted) pushes what it holds (atexit).
    One killed outright (SIGKILL, OOM) loses its last ENVOI_TRACKING_FLUSH_MS of hits: opens and clicks,
    never customer data, as a PostgreSQL crash does with synchronous_commit off. drain_hits()
    pushes its own process's buffer first."""

    FLUSH_ITEMS = 500
    IDLE_SECONDS = 30  # the thread ends after this long without hits (the next hit starts another)

    def __init__(self, app):
        self.app = app
        self.seconds = app.config.get("TRACKING_FLUSH_MS", 50) / 1000
        self._reset()

    def _reset(self):
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.items: list[str] = []
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    @classmethod
    def of(cls, app) -> "HitBuffer":
        buffer = app.extensions.get("envoi.hit_buffer")
        if buffer is None:
            buffer = app.extensions.setdefault("envoi.hit_buffer", cls(app))
        return buffer

    def add(self, item: str) -> None:
        if self.pid != os.getpid():  # forked: the parent's list, lock and thread are not ours
            self._reset()
        with self.lock:
            self.items.append(item)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="envoi-hit-buffer", daemon=True)
                self.thread.start()
            if len(self.items) >= self.FLUSH_ITEMS:
                self.wake.set()

    def flush(self) -> int:
        """Push what is waiting now; how many."""
        with self.lock:
            items, self.items = self.items, []
        if items:
            try:
                with self.app.app_context():
                    _push(items)
            except Exception:  # neither Redis nor the database took them: keep them for the next round
                with self.lock:
                    self.items[:0] = items
                raise
        return len(items)

    def _run(self) -> None:
        atexit.register(self.flush)
        last = time.monotonic()
        while True:
            self.wake.wait(self.seconds)
            self.wake.clear()
            try:
                if self.flush():
                    last = time.monotonic()
            except Exception:  # never let the thread die with hits in the list: log, retry next round
                self.app.logger.exception("tracking: could not push the buffered hits")
            with self.lock:
                if time.monotonic() - last >= self.IDLE_SECONDS and not self.items:
                    self.thread = None
                    atexit.unregister(self.flush)
                    return


def flush_hits() -> int:
    """Push this process's buffered hits to Redis now (tests, the drainer, shutdown)."""
    return HitBuffer.of(current_app._get_current_object()).flush()


def _event_row(item) -> dict:
    contact_id, campaign_id, channel, kind, us, bot, data, _code = item
    return {"contact_id": contact_id, "campaign_id": campaign_id, "channel": channel, "kind": kind,
            "occurred_at": _EPOCH + timedelta(microseconds=us), "is_bot": bool(bot), "data": data}


def _apply_rows(rows: list, batch: str | None = None) -> bool:
    """Write buffered hits in one transaction: the events (of contacts that still exist), the short
    links' click counts, and (`batch`) the batch's name. False if that batch was already written."""
    from campaigns.models import ShortLink
    from contacts.models import Contact
    from segments.models import insert_events

    s = ShortLink.__table__
    with db.engine.begin() as conn:
        if batch is not None:
            d = TrackingDrain.__table__
            if conn.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert

                claim = insert(d).on_conflict_do_nothing()
            else:
                claim = sa.insert(d).prefix_with("OR IGNORE")
            claimed = conn.execute(claim.values(batch=batch, drained_at=utcnow()).returning(d.c.batch)).first()
            if claimed is None:  # written before (by a drainer that died before dropping its key)
                return False
        rows = _sms_clicks_checked(conn, rows)
        events = [_event_row(item) for item in rows]
        ids = sorted({r["contact_id"] for r in events if r["contact_id"] is not None})
        alive = set()
        for chunk in range(0, len(ids), 5000):
            alive.update(conn.scalars(sa.select(Contact.id).where(Contact.id.in_(ids[chunk:chunk + 5000]))))
        events = [r for r in events if r["contact_id"] in alive]
        insert_events(conn, events)
        clicks: dict[str, list] = {}
        for item in rows:
            if item[7]:
                n, last = clicks.get(item[7], (0, 0))
                clicks[item[7]] = (n + 1, max(last, item[4]))
        for code, (n, last) in sorted(clicks.items()):
            at = _EPOCH + timedelta(microseconds=last)
            conn.execute(sa.update(s).where(s.c.code == code).values(
                clicks=s.c.clicks + n,
                last_clicked_at=sa.case((sa.or_(s.c.last_clicked_at.is_(None), s.c.last_clicked_at < at), at),
                                        else_=s.c.last_clicked_at)))
    return True


def _sms_clicks_checked(conn, rows: list) -> list:
    """The hits on SMS links whose row still exists (its campaign or contact may be gone), flagged as
    a machine's when they came within BOT_SECONDS of the sending (as is_bot() does for the others)."""
    from campaigns.models import ShortLink

    codes = sorted({item[7] for item in rows if item[7]})
    if not codes:
        return rows
    s = ShortLink.__table__
    sent = {}
    for chunk in range(0, len(codes), 5000):
        sent.update((code, at) for code, at in conn.execute(sa.select(s.c.code, s.c.created_at).where(
            s.c.code.in_(codes[chunk:chunk + 5000]))))
    out = []
    for item in rows:
        code = item[7]
        if code:
            if code not in sent:
                continue
            if sent[code] is not None and item[4] // 1_000_000 - int(sent[code].timestamp()) < BOT_SECONDS:
                item = [*item[:5], True, *item[6:]]
        out.append(item)
    return out


def drain_hits(batch: int = BATCH, max_batches: int | None = None) -> int:
    """Move buffered hits into message_events; returns how many were taken. Safe to run concurrently
    and after a drainer died mid-batch (see above): every hit is written once."""
    flush_hits()
    client = _redis()
    done = 0
    for key in sorted(k.decode() for k in client.smembers(DRAINING)):  # left by a drainer that died
        done += finish_batch(key)
    batches = 0
    while max_batches is None or batches < max_batches:
        key = take_batch(batch)
        if key is None:
            break
        done += finish_batch(key)
        batches += 1
    if done:
        d = TrackingDrain.__table__
        with db.engine.begin() as conn:  # names kept a day: far longer than a dead drainer's batch waits
            conn.execute(sa.delete(d).where(d.c.drained_at < utcnow() - timedelta(days=1)))
    return done


def take_batch(size: int = BATCH) -> str | None:
    """Move the first `size` buffered hits, atomically, to a key of their own (listed in DRAINING)."""
    client = _redis()
    key = f"{DRAINING}:{uuid.uuid4().hex}"
    return key if client.register_script(_TAKE)(keys=[HITS, key, DRAINING], args=[size]) else None


def finish_batch(key: str) -> int:
    """Write a taken batch (unless its name says it was written already), then drop its key."""
    client = _redis()
    rows = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    if rows:
        _apply_rows(rows, batch=key.rsplit(":", 1)[-1])
    client.delete(key)
    client.srem(DRAINING, key)
    return len(rows)


def drain_for(seconds: float, pause: float = 0.5) -> int:
    """Drain again and again for about `seconds` (the periodic actor runs once a minute)."""
    deadline = time.monotonic() + seconds
    done = 0
    while True:
        done += drain_hits()
        if time.monotonic() + pause >= deadline:
            return done
        time.sleep(pause)


def _writer():
    """Where the short-link lookups go. On PostgreSQL: a small engine of this process in autocommit
    (one round trip a hit, no BEGIN/COMMIT). Elsewhere (SQLite) the app's session."""
    engine = db.engine
    if engine.dialect.name != "postgresql":
        return None
    key = (id(engine), str(engine.url))
    writer = _WRITERS.get(key)
    if writer is None:
        writer = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=4, max_overflow=16,
                                  pool_pre_ping=False)
        _WRITERS[key] = writer
    return writer


def record_open(token: str, *, user_agent: str | None = None, ip: str | None = None,
                now: datetime | None = None) -> bool:
    """Record an open from the pixel; TokenInvalid on a bad token. True if a person, False if a bot."""
    campaign_id, contact_id, sent = read_open_token(token)
    now = now or utcnow()
    bot = is_bot(user_agent, ip, sent, now, "opened")
    _hit(contact_id, campaign_id, "email", "opened", now, bot, {})
    return not bot


def record_click(token: str, *, user_agent: str | None = None, ip: str | None = None,
                 now: datetime | None = None) -> str:
    """Record a click and return the URL to redirect to (the one signed in the token)."""
    campaign_id, contact_id, sent, url = read_click_token(token)
    now = now or utcnow()
    bot = is_bot(user_agent, ip, sent, now, "clicked")
    _hit(contact_id, campaign_id, "email", "clicked", now, bot, {"url": url})
    return url


def follow_short_link(code: str, *, user_agent: str | None = None, ip: str | None = None,
                      now: datetime | None = None) -> str | None:
    """Count a click on an SMS short link and return its URL (None: no such code, or a forged one).
    A code of the second form is checked by its MAC and needs no read (its URL cached per process);
    one of the first form is one lookup by primary key. The count and the event are buffered with
    the other hits; the drain flags a click within BOT_SECONDS of the sending (short_links.created_at)."""
    if not re.fullmatch(r"[0-9A-Za-z]{4,24}", code or ""):
        return None
    now = now or utcnow()
    if len(code) > 10:
        return _follow_sms_code(code, user_agent, ip, now)
    row = _read("short", code)
    if row is None:
        return None
    url, campaign_id, contact_id, created_at = row
    if contact_id is not None:
        sent = int(created_at.timestamp()) if created_at else None
        bot = is_bot(user_agent, ip, sent, now, "clicked")
        _hit(contact_id, campaign_id, "sms", "clicked", now, bot, {"url": url, "code": code}, code=code)
    else:
        _hit(None, campaign_id, "sms", "clicked", now, False, {}, code=code)  # counted, no event
    return url


def _follow_sms_code(code: str, user_agent, ip, now: datetime) -> str | None:
    parsed = read_sms_code(code)
    if parsed is None:
        return None
    campaign_id, contact_id, position = parsed
    body, mac = code[:-SMS_MAC], code[-SMS_MAC:]
    key = (current_app.config["SECRET_KEY"], current_app.config["SQLALCHEMY_DATABASE_URI"], campaign_id, position)
    url = _LINK_URLS.get(key)
    if url is None or not hmac.compare_digest(mac, _sms_mac(body, url)):
        row = _read("sms_link", campaign_id, position)
        url = row[0] if row is not None else None
        if url is None or not hmac.compare_digest(mac, _sms_mac(body, url)):
            return None
        if len(_LINK_URLS) >= 10_000:  # a few links per campaign: this bounds the cache, never fills it
            _LINK_URLS.clear()
        _LINK_URLS[key] = url
    bot = is_bot(user_agent, ip, None, now, "clicked")
    _hit(contact_id, campaign_id, "sms", "clicked", now, bot, {"url": url, "code": code}, code=code)
    return url


def _read(name: str, *keys):
    """One row by primary key, for the SMS links: short_links by code, sms_links by (campaign, position)."""
    from campaigns.models import ShortLink
    from campaigns.tracking_models import SmsLink

    if name not in _STATEMENTS:
        t, s = ShortLink.__table__, SmsLink.__table__
        _STATEMENTS["short"] = sa.select(t.c.url, t.c.campaign_id, t.c.contact_id, t.c.created_at).where(
            t.c.code == sa.bindparam("k0"))
        _STATEMENTS["sms_link"] = sa.select(s.c.url).where(s.c.campaign_id == sa.bindparam("k0"),
                                                           s.c.position == sa.bindparam("k1"))
    params = {f"k{i}": k for i, k in enumerate(keys)}
    writer = _writer()
    if writer is None:
        return db.session.execute(_STATEMENTS[name], params).first()
    with writer.connect() as conn:
        return conn.execute(_STATEMENTS[name], params).first()


# ---------------------------------------------------------------- switches

def set_campaign_tracking(campaign_id: int, on: bool) -> dict:
    """Switch tracking of a campaign on or off (its next messages); NotFound if it does not exist."""
    from campaigns.models import Campaign
    from envoi.errors import NotFound

    if not _int(campaign_id):
        raise NotFound("campaign not found")
    moved = db.session.execute(sa.update(Campaign).where(Campaign.id == campaign_id)
                               .values(track=bool(on), updated_at=utcnow())).rowcount
    db.session.commit()
    if not moved:
        raise NotFound("campaign not found")
    return {"id": campaign_id, "track": bool(on)}


def set_tracking_refused(contact_id: int, refused: bool) -> None:
    """The person refuses (or accepts again) open and click tracking: their next messages carry no pixel
    and their links are left as written."""
    from contacts.models import Contact

    db.session.execute(sa.update(Contact).where(Contact.id == contact_id, Contact.tracking_refused != bool(refused))
                       .values(tracking_refused=bool(refused), updated_at=utcnow())
                       .execution_options(synchronize_session=False))
    db.session.commit()


def tracked(campaign_track: bool, contact) -> bool:
    return bool(campaign_track) and contact is not None and bool(getattr(contact, "id", None)) \
        and not getattr(contact, "tracking_refused", False)


__all__ = ["open_token", "click_token", "read_open_token", "read_click_token", "track_email", "shorten_sms",
           "short_code", "is_bot", "record_open", "record_click", "follow_short_link", "set_campaign_tracking",
           "set_tracking_refused", "tracked", "TokenInvalid", "PIXEL"]
