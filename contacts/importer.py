"""CSV import of contacts: streamed in chunks, validated by `clean_contact`, written in bulk.

One pass over the file; per chunk of rows: validate (optionally in a pool of processes),
look up the existing contacts by email and phone in one query, decide per row whether it
creates, updates or leaves a contact unchanged, then write the chunk with bulk statements
(COPY on PostgreSQL) and commit. Memory stays flat whatever the file size.

Rules (the same as the API's upsert, applied to many rows at once):
- a row matches a contact by email, then by phone; email and phone of two different
  contacts is a rejected row (merge them with `flask contacts dedupe`);
- an empty cell leaves the stored value alone (an import never blanks data); `tags` replaces
  the tags when given; `topics` and `--topic` add subscriptions, never remove one;
- within one file a later row for the same contact wins for the fields it gives (the rows
  are applied in order, so a row that only adds a phone keeps the earlier row's name);
- setting a status to confirmed needs the consent columns; a contact who opted out is only
  confirmed again by a consent given after the opt-out (otherwise the status is left alone and
  the rest of the row applies), and a withdrawn topic is only re-subscribed the same way;
- an erased address or number (suppression list) is rejected;
- consent events are recorded as the API records them, with method "import".

Re-importing a file changes nothing: every row is unchanged, no event is written.

On PostgreSQL the validation process hands back COPY text instead of dicts, and new and unchanged
rows are merged set-based through a staging table (contacts/staging.py); the other rows of the
chunk go through the row-by-row merge below, in the same transaction. SQLite uses the row-by-row
merge for every row.
"""
from __future__ import annotations

import csv
import gc
import io
import json
import logging
import os
from collections import deque
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from contacts.errors import ValidationError
from contacts.models import PERSONAL_FIELDS, ConsentEvent, Contact, ContactTopic, ImportJob, Suppression, Topic
from contacts.services import attribute_types, consent_predates_opt_out, suppressed_values
from contacts.staging import CONTACT_IDS, any_suppressed, copy_line, merge_staged
from contacts.validation import clean_contact
from envoi.errors import EnvoiError
from envoi.extensions import db
from envoi.types import utcnow

log = logging.getLogger(__name__)

CONSENT_COLUMNS = ("consent_source", "consent_at", "consent_text")
# The contact keys of DESIGN.md, in the order of the JSON shape; export writes the same.
COLUMNS = ("email", "phone", *PERSONAL_FIELDS, "tags", "topics", "email_status", "sms_status", *CONSENT_COLUMNS)
CHUNK_ROWS = 5000
# Files above this size are validated by a pool of processes (below it, the pool costs more than it saves).
POOL_MIN_BYTES = 8 * 1024 * 1024
STALE_AFTER = timedelta(minutes=2)
# A job still "running" after the actor's time limit lost its worker.
LOST_AFTER = timedelta(hours=6, minutes=5)

try:  # COPY goes through the driver's own connection, so its errors are the driver's
    from psycopg.errors import IntegrityError as _PgIntegrityError

    CONFLICTS: tuple = (IntegrityError, _PgIntegrityError)
except ImportError:  # pragma: no cover - SQLite-only installs
    CONFLICTS = (IntegrityError,)

_SCALAR_KEYS = frozenset(("email", "phone", *PERSONAL_FIELDS))
_CONTACT_COLUMNS = ("email", "phone", *PERSONAL_FIELDS, "tags", "attributes", "email_status", "sms_status",
                    "email_status_at", "sms_status_at")


@dataclass
class ImportResult:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects_path: str | None = None
    # Confirmations ignored because the contact opted out after the consent given in the file.
    stale_consents: int = 0

    def summary(self) -> str:
        return (f"{self.rows} rows: {self.created} created, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.rejected} rejected")


# --- the file ---------------------------------------------------------------------------------

@dataclass
class Layout:
    """How the file's columns map to contact keys."""

    header: list[str]
    delimiter: str
    keys: list[str | None] = field(default_factory=list)  # per column: contact key, "attributes.x" or None


def parse_mapping(pairs) -> dict[str, str]:
    """`--map 'E-mail=email'` options: file column -> contact key."""
    mapping = {}
    for pair in pairs or ():
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValidationError("invalid mapping", {"map": f"{pair!r}: expected 'File column=contact_key'"})
        mapping[source.strip()] = target.strip()
    return mapping


def sniff_delimiter(first_line: str) -> str:
    return ";" if first_line.count(";") > first_line.count(",") else ","


def read_layout(path: str, *, mapping: dict | None = None, delimiter: str | None = None,
                attr_types: dict | None = None) -> Layout:
    """Check the header before anything is imported; raise ValidationError naming the problem."""
    mapping = mapping or {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            sample = fh.read(64 * 1024)
    except UnicodeDecodeError:
        raise ValidationError("not a UTF-8 CSV file", {"file": "not UTF-8 text; save the CSV as UTF-8"}) from None
    except OSError as err:
        raise ValidationError("cannot read the file", {"file": str(err)}) from None
    first = sample.splitlines()[0] if sample.strip() else ""
    if not first.strip():
        raise ValidationError("empty file", {"file": "empty: expected a header line with the column names"})
    if "\x00" in sample:
        raise ValidationError("not a CSV file", {"file": "binary content; expected a UTF-8 CSV file"})
    delimiter = delimiter or sniff_delimiter(first)
    header = next(csv.reader([first], delimiter=delimiter))
    header = [h.strip() for h in header]
    types = attribute_types() if attr_types is None else attr_types
    keys, unknown, seen = [], [], set()
    for name in header:
        key = mapping.get(name, name)
        if key in ("", "id", "created_at", "updated_at") and name not in mapping:
            keys.append(None)  # exports carry these; an import ignores them
            continue
        if key in COLUMNS or (key.startswith("attributes.") and key[11:] in types):
            if key in seen:
                raise ValidationError("duplicate column", {"file": f"column {key!r} appears twice"})
            seen.add(key)
            keys.append(key)
        else:
            unknown.append(name)
    if unknown:
        hint = "not a contact key (see DESIGN.md), an attributes.<key> of a declared attribute, or mapped with --map"
        raise ValidationError("unknown columns", {"file": f"unknown column(s) {', '.join(map(repr, unknown))}: {hint}"})
    for target in mapping.values():
        if target not in COLUMNS and not (target.startswith("attributes.") and target[11:] in types):
            raise ValidationError("invalid mapping", {"map": f"{target!r} is not a contact key"})
    if "email" not in seen and "phone" not in seen:
        raise ValidationError("no email or phone column", {"file": "needs an email or a phone column"})
    return Layout(header=header, delimiter=delimiter, keys=keys)


# --- validation (runs in the main process or in a pool) ---------------------------------------

_WORKER: dict = {}


def _init_worker(keys, attr_types, region, stage=None):
    _WORKER.update(keys=keys, attr_types=attr_types, region=region, stage=stage)
    # Below the writer: on a machine whose cores the database shares, the database's work is the
    # import's critical path, and the pool validates a few chunks ahead anyway.
    os.nice(10)
    _fewer_collections()  # for the pool process's life


def _fewer_collections() -> tuple:
    """Fewer garbage collections while importing: a chunk allocates ~100,000 short-lived objects
    (freed by reference counting; the rows make no cycles), and each full collection also walked
    every module object of Flask and SQLAlchemy. Freezing those and collecting young objects
    less often saves ~20% of the import's CPU. Full collections still run every ~2 million
    allocations: rarer ones let cyclic garbage pile up (+100 MB over 1,000,000 rows).
    Returns the thresholds to restore."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    return before


@contextmanager
def _quiet_gc():
    before = _fewer_collections()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _row_to_raw(cells: list[str], keys) -> dict:
    raw: dict = {}
    consent: dict = {}
    attrs: dict = {}
    for key, value in zip(keys, cells):
        if key is None or value == "" or value.isspace():
            continue
        if key in CONSENT_COLUMNS:
            consent[key[8:]] = value.strip()
        elif key.startswith("attributes."):
            attrs[key[11:]] = value
        elif key in ("email_status", "sms_status"):
            value = value.strip().lower()
            if value != "none":  # what an export writes for "never asked"; not a change
                raw[key] = value
        else:
            raw[key] = value
    if consent:
        raw["consent"] = consent
    if attrs:
        raw["attributes"] = attrs
    return raw


def _field(name: str) -> str:
    if name.startswith("consent."):
        return "consent_" + name[8:]
    return name.split("[", 1)[0]


def validate_rows(rows: list[list[str]], keys=None, attr_types=None, region=None) -> list:
    """Per row: the cleaned dict, or the rejection reason ("email: ...; phone: ...")."""
    keys = keys if keys is not None else _WORKER["keys"]
    attr_types = attr_types if attr_types is not None else _WORKER["attr_types"]
    region = region or _WORKER["region"]
    width = len(keys)
    out = []
    for cells in rows:
        if len(cells) != width:
            if len(cells) > width and not any(c.strip() for c in cells[width:]):
                cells = cells[:width]
            elif len(cells) < width:
                cells = cells + [""] * (width - len(cells))
            else:
                out.append(f"row: {len(cells)} cells, the header has {width}")
                continue
        try:
            out.append(clean_contact(_row_to_raw(cells, keys), attribute_types=attr_types, region=region))
        except ValidationError as err:
            out.append("; ".join(f"{_field(k)}: {v}" for k, v in err.fields.items()))
    return out


def stage_rows(rows: list[list[str]], keys=None, attr_types=None, region=None, stage=None) -> tuple[str, list]:
    """validate_rows for the staging table: (COPY text of the valid rows, [(index, reason)] of the others).

    `stage` is (topic slug -> id, the --topic id, the secret key to hash addresses with or None).
    A line carries its row's index in the chunk; the text is one string, cheap to send back."""
    stage = stage if stage is not None else _WORKER["stage"]
    topics, topic_id, secret = stage
    lines, reasons = [], []
    for i, clean in enumerate(validate_rows(rows, keys, attr_types, region)):
        if isinstance(clean, str):
            reasons.append((i, clean))
            continue
        try:
            topic_ids = topic_ids_of(clean.get("topics"), topics, topic_id)
        except ValidationError as err:
            reasons.append((i, "; ".join(f"{k}: {v}" for k, v in err.fields.items())))
            continue
        lines.append(copy_line(i, clean, topic_ids, secret))
    return "".join(lines), reasons


def topic_ids_of(slugs, topics: dict[str, int], topic_id: int | None) -> list[int]:
    """The topics a row subscribes to: its `topics` cell, then --topic; an unknown slug is a ValidationError."""
    if not slugs:
        return [] if topic_id is None else [topic_id]
    unknown = [s for s in slugs if s not in topics]
    if unknown:
        raise ValidationError("unknown topic", {"topics": f"unknown topic(s): {', '.join(unknown)}"})
    ids = [topics[s] for s in slugs]
    if topic_id is not None and topic_id not in ids:
        ids.append(topic_id)
    return ids


# --- the import -------------------------------------------------------------------------------

def import_csv(path: str, *, topic: str | None = None, mapping: dict | None = None, delimiter: str | None = None,
               rejects_path: str | None = None, method: str = "import", author_id: int | None = None,
               workers: int | None = None, chunk_rows: int | None = None, progress=None) -> ImportResult:
    """Import a CSV file of contacts; returns the counts. Bad files raise ValidationError before any write.

    `progress(bytes_read, result)` is called after each chunk is committed, with the counts so far; `workers` sets the validation pool
    (default: 2 processes for large files on a multi-core machine, none otherwise).
    """
    topic_id = None
    if topic:
        topic_id = db.session.scalar(sa.select(Topic.id).where(Topic.slug == topic))
        if topic_id is None:
            raise ValidationError("unknown topic", {"topic": f"no topic {topic!r}"})
    attr_types = attribute_types()
    layout = read_layout(path, mapping=mapping, delimiter=delimiter, attr_types=attr_types)
    region = current_app.config["DEFAULT_REGION"]
    if workers is None:
        # One validation process keeps up with the writer since the fast paths; a second one only
        # competes with PostgreSQL for the cores and costs ~100 MB.
        workers = 1 if os.path.getsize(path) >= POOL_MIN_BYTES and (os.cpu_count() or 1) > 1 else 0
    topics = dict(db.session.execute(sa.select(Topic.slug, Topic.id)).all())
    writer = _ChunkWriter(method=method, author_id=author_id, topic_id=topic_id, topics=topics)
    stage = None
    if _dialect() == "postgresql":
        # Addresses are hashed for the erasure check only when someone was ever erased.
        secret = current_app.config["SECRET_KEY"] if any_suppressed(db.session) else None
        stage = (topics, topic_id, secret)
        writer = _StagedWriter(writer, layout.keys, attr_types, region, hashed=secret is not None)
    result = ImportResult()
    rejects = _Rejects(rejects_path or _default_rejects_path(path), layout.header, layout.delimiter)
    db.session.commit()  # end the read transaction; each chunk commits its own
    raw_file = open(path, "rb")
    try:
        text = io.TextIOWrapper(raw_file, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=layout.delimiter)
        next(reader)  # header, checked by read_layout

        positions: deque = deque()  # where each chunk ends in the file, for `progress`

        def chunks():
            chunk = []
            try:
                for cells in reader:
                    if not cells or (len(cells) == 1 and not cells[0].strip()):
                        continue
                    chunk.append(cells)
                    if len(chunk) >= (chunk_rows or CHUNK_ROWS):
                        positions.append(raw_file.tell())
                        yield chunk
                        chunk = []
            except UnicodeDecodeError:
                raise ValidationError("not a UTF-8 CSV file",
                                      {"file": f"not UTF-8 text near line {reader.line_num + 1}; rows before it were imported"}) from None
            except csv.Error as err:
                raise ValidationError("malformed CSV", {"file": f"line {reader.line_num}: {err}"}) from None
            if chunk:
                positions.append(raw_file.tell())
                yield chunk

        validated = _validated(chunks(), layout.keys, attr_types, region, workers, stage)
        with _quiet_gc(), closing(_ahead(validated) if workers else validated) as validated:
            for rows, cleaned in validated:
                counts = writer.write(rows, cleaned, rejects)
                result.rows += len(rows)
                for key, value in counts.items():
                    setattr(result, key, getattr(result, key) + value)
                position = positions.popleft()
                if progress is not None:
                    progress(position, result)
    finally:
        raw_file.close()
        rejects.close()
    result.rejects_path = rejects.path if rejects.count else None
    return result


def _default_rejects_path(path: str) -> str:
    base = path[:-4] if path.lower().endswith(".csv") else path
    return base + ".rejects.csv"


def _validated(chunks, keys, attr_types, region, workers, stage=None):
    """Yield (rows, cleaned) per chunk, in order; a pool validates a few chunks ahead, bounded.
    With `stage` (PostgreSQL), `cleaned` is stage_rows' (COPY text, reasons) instead of the dicts.
    An error reading the file (malformed CSV ...) is raised after the chunks read before it."""
    if not workers:
        for rows in chunks:
            yield rows, (validate_rows(rows, keys, attr_types, region) if stage is None
                         else stage_rows(rows, keys, attr_types, region, stage))
        return
    import multiprocessing

    # spawn: the parent may hold threads (Dramatiq) and database connections; forking them is unsafe.
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (keys, attr_types, region, stage))
    func = validate_rows if stage is None else stage_rows
    try:
        pending: deque = deque()
        failed = None
        try:
            for rows in chunks:
                pending.append((rows, pool.apply_async(func, (rows,))))
                if len(pending) > workers + 1:
                    rows0, res = pending.popleft()
                    yield rows0, res.get()
        except ValidationError as err:  # the file's fault: the chunks already read are written first
            failed = err
        while pending:
            rows0, res = pending.popleft()
            yield rows0, res.get()
        if failed is not None:
            raise failed
    finally:
        pool.terminate()
        pool.join()


def _ahead(items, depth: int = 1):
    """Yield what the generator `items` yields, running it in a thread up to `depth` items ahead: the
    file is read and handed to the validation pool while this thread waits on the database. Its
    exception is raised here, after the items it yielded first; closing this closes `items`."""
    import queue
    import threading

    out: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        out.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            out_item = (end, None)
        except BaseException as err:  # noqa: B902 - handed to the consumer
            out_item = (end, err)
        finally:
            items.close()
        while not stop.is_set():
            try:
                out.put(out_item, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=run, name="import-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, err = out.get()
            if item is end:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join()


class _Rejects:
    """The rejected rows with their reason; the file is written only when a row is rejected."""

    def __init__(self, path: str, header: list[str], delimiter: str):
        self.path, self.header, self.delimiter = path, header, delimiter
        self.count = 0
        self._fh = None
        self._csv = None

    def add(self, cells: list[str], reason: str) -> None:
        if self._fh is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8", newline="")
            self._csv = csv.writer(self._fh, delimiter=self.delimiter)
            self._csv.writerow([*self.header, "reason"])
        self._csv.writerow([*cells[:len(self.header)], *[""] * (len(self.header) - len(cells)), reason])
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _retry_conflicts(write):
    """`write()`, again up to three times if a concurrent writer made it conflict (rolled back each
    time); None if it still conflicts."""
    for attempt in range(3):
        try:
            return write()
        except CONFLICTS:
            db.session.rollback()
            log.info("import chunk conflicted with a concurrent writer; retrying (%d)", attempt + 1)
    return None


class _ChunkWriter:
    """Applies a validated chunk to the database in a few bulk statements and one commit."""

    def __init__(self, *, method: str, author_id: int | None, topic_id: int | None, topics: dict[str, int]):
        self.method, self.author_id, self.topic_id, self.topics = method, author_id, topic_id, topics
        self.table = Contact.__table__

    def write(self, rows: list[list[str]], cleaned: list, rejects: _Rejects) -> dict:
        # Another writer may insert one of these addresses between our lookup and our insert: look
        # again, the rows then update that contact.
        done = _retry_conflicts(lambda: self._write(rows, cleaned, rejects))
        if done is not None:
            return done
        # Still conflicting (two existing contacts swapping addresses ...): row by row, naming the loser.
        totals: dict = {}
        for i in range(len(rows)):
            try:
                counts = self._write(rows[i:i + 1], cleaned[i:i + 1], rejects)
            except CONFLICTS:
                db.session.rollback()
                rejects.add(rows[i], "email: conflicts with another contact written at the same time; import it again")
                counts = {"rejected": 1}
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    # -- one attempt ---------------------------------------------------------------------------

    def _write(self, rows, cleaned, rejects: _Rejects) -> dict:
        found: list = []
        counts = self.apply(rows, cleaned, found)
        db.session.commit()
        for cells, reason in found:
            rejects.add(cells, reason)
        return counts

    def apply(self, rows, cleaned, found: list) -> dict:
        """Merge a validated chunk row by row, in the current transaction (not committed);
        appends (cells, reason) of the rejected rows to `found`, in order."""
        now = utcnow()
        emails = {c["email"] for c in cleaned if isinstance(c, dict) and c.get("email")}
        phones = {c["phone"] for c in cleaned if isinstance(c, dict) and c.get("phone")}
        blocked = self._suppressed(emails, phones)
        existing = self._lookup(emails, phones)
        by_email = {s["email"]: s for s in existing if s["email"]}
        by_phone = {s["phone"]: s for s in existing if s["phone"]}
        wants_topics = self.topic_id is not None or any(isinstance(c, dict) and c.get("topics") for c in cleaned)
        if wants_topics and existing:
            self._load_links(existing)
        new: list[dict] = []
        events: list[tuple[dict, dict]] = []
        links: list[tuple[dict, int, bool]] = []  # (state, topic_id, link existed)
        counts = {"created": 0, "updated": 0, "unchanged": 0, "rejected": 0, "stale_consents": 0}
        outcome: dict[int, str] = {}
        chunk_rejects = []
        for i, clean in enumerate(cleaned):
            if isinstance(clean, str):
                chunk_rejects.append((rows[i], clean))
                continue
            email, phone = clean.get("email"), clean.get("phone")
            if email in blocked or phone in blocked:
                which = "email" if email in blocked else "phone"
                chunk_rejects.append((rows[i], f"{which}: erased at the person's request; only they can sign up again"))
                continue
            a = by_email.get(email) if email else None
            b = by_phone.get(phone) if phone else None
            if a is not None and b is not None and a is not b:
                ident = f"contact {b['id']}" if b.get("id") else "another row of this file"
                chunk_rejects.append((rows[i], f"phone: already the phone of {ident}; merge them with flask contacts dedupe"))
                continue
            try:
                topic_ids = self._topic_ids(clean)
            except ValidationError as err:
                chunk_rejects.append((rows[i], "; ".join(f"{k}: {v}" for k, v in err.fields.items())))
                continue
            state = a or b
            created = state is None
            if created:
                state = _blank_state()
                new.append(state)
            old_email, old_phone = state["email"], state["phone"]
            changed, stale = self._apply(state, clean, topic_ids, created, now, events, links)
            counts["stale_consents"] += stale
            if old_email != state["email"]:
                by_email.pop(old_email, None)
                by_email[state["email"]] = state
            if old_phone != state["phone"]:
                by_phone.pop(old_phone, None)
                by_phone[state["phone"]] = state
            key = id(state)
            if created:
                outcome[key] = "created"
                counts["created"] += 1
            elif changed:
                state["_dirty"] = True
                counts["updated"] += 1
            else:
                counts["unchanged"] += 1
        dirty = [s for s in existing if s.get("_dirty")]
        if dirty or new or events or links:
            self._flush(dirty, new, events, links, now)
        found.extend(chunk_rejects)
        counts["rejected"] = len(chunk_rejects)
        return counts

    def _topic_ids(self, clean) -> list[int]:
        return topic_ids_of(clean.get("topics"), self.topics, self.topic_id)

    def _apply(self, state, clean, topic_ids, created, now, events, links) -> tuple[bool, int]:
        changed = created
        stale = 0
        for key, value in clean.items():
            if value is not None and key in _SCALAR_KEYS and state[key] != value:
                state[key] = value
                changed = True
        if "tags" in clean and clean["tags"] != _loaded(state, "tags"):
            state["tags"] = clean["tags"]
            changed = True
        if clean.get("attributes"):
            attrs = dict(_loaded(state, "attributes"))
            for key, value in clean["attributes"].items():
                if value is not None:
                    attrs[key] = value
            if attrs != state["attributes"]:
                state["attributes"] = attrs
                changed = True
        consent = clean.get("consent")
        for channel in ("email", "sms"):
            wanted = clean.get(f"{channel}_status")
            current = state[f"{channel}_status"]
            if not wanted or wanted == current:
                continue
            since = state[f"{channel}_status_at"]
            if consent_predates_opt_out(wanted, current, since, consent):
                stale += 1  # the rest of the row still applies
                continue
            state[f"{channel}_status"] = wanted
            state[f"{channel}_status_at"] = now
            changed = True
            if wanted in ("confirmed", "unsubscribed"):
                events.append((state, self._event(channel, None, "granted" if wanted == "confirmed" else "withdrawn",
                                                  consent, now, with_author=True)))
        for topic_id in topic_ids:
            link = state["_links"].get(topic_id)
            if link is not None:
                subscribed, since = link
                if subscribed:
                    continue
                if consent is None or (since and consent["at"] <= since):
                    continue  # withdrawn by the person; only a later consent brings it back
            state["_links"][topic_id] = (True, now)
            links.append((state, topic_id, link is not None))
            events.append((state, self._event("email", topic_id, "granted", consent, now)))
            changed = True
        if changed:
            state["updated_at"] = now
        return changed, stale

    def _event(self, channel, topic_id, kind, consent, now, with_author=False) -> dict:
        consent = consent or {}
        return {"channel": channel, "topic_id": topic_id, "kind": kind, "method": self.method,
                "source": consent.get("source") or self.method, "text": consent.get("text"),
                "consented_at": consent.get("at") or now, "recorded_at": now, "ip": None, "user_agent": None,
                "page_url": None, "data": {"author_id": self.author_id} if with_author and self.author_id else {}}

    # -- reads ---------------------------------------------------------------------------------

    def _suppressed(self, emails, phones) -> set[str]:
        if not db.session.scalar(sa.select(Suppression.id).limit(1)):
            return set()  # nobody was ever erased: skip hashing every value
        return suppressed_values(emails, phones)

    def _lookup(self, emails, phones) -> list[dict]:
        found: dict[int, dict] = {}
        self._fetch(found, "email", emails)
        # A phone already on a contact found by its email needs no second look.
        self._fetch(found, "phone", phones - {s["phone"] for s in found.values() if s["phone"]})
        return list(found.values())

    def _fetch(self, found: dict, key: str, values) -> None:
        if not values:
            return
        t = self.table
        column = t.c[key]
        # JSON stays text until a row needs it: most rows leave tags and attributes alone.
        cols = [t.c.id, *(sa.cast(t.c[n], sa.Text).label(n) if n in ("tags", "attributes") else t.c[n]
                          for n in _CONTACT_COLUMNS)]
        values = list(values)
        if _dialect() == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            # A join on unnest(array): index probes (or one hash join), never an array scan per row.
            # Probe the unique index per key: a hash join would scan the whole table for every chunk.
            db.session.execute(sa.text("SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; "
                                       "SET LOCAL enable_mergejoin = off"))
            keys = sa.func.unnest(sa.bindparam("keys", values, type_=ARRAY(sa.String))).table_valued("k").render_derived()
            queries = [sa.select(*cols).join(keys, column == keys.c.k)]
        else:
            queries = [sa.select(*cols).where(column.in_(values[i:i + 500])) for i in range(0, len(values), 500)]
        names = ("id", *_CONTACT_COLUMNS)
        for query in queries:
            for row in db.session.execute(query).all():
                if row[0] not in found:
                    state = dict(zip(names, row))
                    state["_links"] = {}
                    found[row[0]] = state

    def _load_links(self, states) -> None:
        by_id = {s["id"]: s for s in states}
        ids = list(by_id)
        ct = ContactTopic.__table__
        for start in range(0, len(ids), 500):
            rows = db.session.execute(sa.select(ct.c.contact_id, ct.c.topic_id, ct.c.subscribed, ct.c.updated_at)
                                      .where(ct.c.contact_id.in_(ids[start:start + 500])))
            for cid, topic_id, subscribed, updated_at in rows:
                by_id[cid]["_links"][topic_id] = (subscribed, updated_at)

    # -- writes --------------------------------------------------------------------------------

    def _flush(self, dirty, new, events, links, now) -> None:
        t = self.table
        if dirty:
            values = {name: sa.bindparam(f"v_{name}") for name in (*_CONTACT_COLUMNS, "updated_at")}
            stmt = sa.update(t).where(t.c.id == sa.bindparam("v_id")).values(**values)
            stmt = stmt.execution_options(synchronize_session=False)
            for s in dirty:
                _loaded(s, "tags"), _loaded(s, "attributes")
            params = [{f"v_{k}": s[k] for k in (*_CONTACT_COLUMNS, "updated_at", "id")} for s in dirty]
            # Core executemany: no ORM objects per row.
            db.session.connection().execute(stmt, params)
        pg = _dialect() == "postgresql"
        if new:
            for s in new:
                s["created_at"] = now
            if pg:
                self._copy_contacts(new)
            else:
                names = (*_CONTACT_COLUMNS, "created_at", "updated_at")
                ids = db.session.connection().execute(
                    sa.insert(t).returning(t.c.id, sort_by_parameter_order=True),
                    [{k: s[k] for k in names} for s in new]).scalars().all()
                for s, ident in zip(new, ids):
                    s["id"] = ident
        if links:
            fresh = [(s["id"], tid) for s, tid, existed in links if not existed]
            again = [(s["id"], tid) for s, tid, existed in links if existed]
            ct = ContactTopic.__table__
            if again:
                db.session.connection().execute(
                    sa.update(ct).where(ct.c.contact_id == sa.bindparam("c"), ct.c.topic_id == sa.bindparam("t"))
                    .values(subscribed=True, updated_at=now), [{"c": c, "t": tid} for c, tid in again])
            if fresh:
                rows = [{"contact_id": c, "topic_id": tid, "subscribed": True, "updated_at": now} for c, tid in fresh]
                if pg:
                    self._copy("contact_topics", ("contact_id", "topic_id", "subscribed", "updated_at"),
                               ([r["contact_id"], r["topic_id"], True, now] for r in rows))
                else:
                    db.session.connection().execute(sa.insert(ct), rows)
        if events:
            names = ("contact_id", "channel", "topic_id", "kind", "method", "source", "text", "consented_at",
                     "recorded_at", "ip", "user_agent", "page_url", "data")
            if pg:
                self._copy("consent_events", names,
                           ([s["id"], *(e[n] for n in names[1:-1]), _json(e["data"])] for s, e in events))
            else:
                db.session.connection().execute(sa.insert(ConsentEvent.__table__),
                                                [{**e, "contact_id": s["id"]} for s, e in events])

    def _copy_contacts(self, new) -> None:
        conn = db.session.connection()
        ids = conn.execute(sa.text(f"SELECT nextval({CONTACT_IDS}) "
                                   "FROM generate_series(1, :n)"), {"n": len(new)}).scalars().all()
        for s, ident in zip(new, ids):
            s["id"] = ident
        names = ("id", *_CONTACT_COLUMNS, "created_at", "updated_at")
        plain = [n for n in names if n not in ("tags", "attributes")]
        order = [*plain, "tags", "attributes"]
        self._copy("contacts", order,
                   ([*(s[n] for n in plain), _json(s["tags"]), _json(s["attributes"])] for s in new))

    def _copy(self, table: str, names, rows) -> None:
        raw = db.session.connection().connection.driver_connection
        with raw.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json(value) -> str:
    return _dumps(value) if value else ("[]" if isinstance(value, list) else "{}")


def _loaded(state: dict, key: str):
    value = state[key]
    if isinstance(value, str):
        value = state[key] = json.loads(value)
    return value if value is not None else ([] if key == "tags" else {})


_BLANK = {**{key: None for key in _CONTACT_COLUMNS}, "id": None, "lifecycle": "prospect", "email_status": "none",
          "sms_status": "none"}


def _blank_state() -> dict:
    state = _BLANK.copy()
    state.update(tags=[], attributes={}, _links={})
    return state


def _dialect() -> str:
    return db.session.get_bind().dialect.name


class _StagedWriter:
    """PostgreSQL: new and unchanged rows merged set-based (contacts/staging.py), the others by the
    row-by-row merge of `_ChunkWriter`, all in the chunk's one transaction."""

    def __init__(self, rows_writer: _ChunkWriter, keys, attr_types, region, *, hashed: bool):
        self.rows_writer, self.keys, self.attr_types, self.region = rows_writer, keys, attr_types, region
        self.hashed = hashed

    def write(self, rows: list[list[str]], staged: tuple[str, list], rejects: _Rejects) -> dict:
        done = _retry_conflicts(lambda: self._write(rows, staged, rejects))  # a concurrent insert: classify again
        if done is not None:
            return done
        # Still conflicting: the row-by-row merge, which ends row by row naming the loser.
        return self.rows_writer.write(rows, validate_rows(rows, self.keys, self.attr_types, self.region), rejects)

    def _write(self, rows, staged, rejects: _Rejects) -> dict:
        text, reasons = staged
        now = utcnow()
        raw = db.session.connection().connection.driver_connection
        with raw.cursor() as cur:
            created, unchanged, left = merge_staged(cur, text, now=now, method=self.rows_writer.method,
                                                    author_id=self.rows_writer.author_id, python=not self.hashed)
        counts = {"created": created, "updated": 0, "unchanged": unchanged, "rejected": 0, "stale_consents": 0}
        found: list = []
        if left:
            subset = [rows[n] for n in left]
            # Validated again here: only these rows need the dicts, and they are few in most files.
            more = self.rows_writer.apply(subset, validate_rows(subset, self.keys, self.attr_types, self.region),
                                          found)
            for key, value in more.items():
                counts[key] += value
        db.session.commit()
        order = {id(cells): n for n, cells in enumerate(rows)}
        every = [(n, rows[n], reason) for n, reason in reasons]
        every += [(order[id(cells)], cells, reason) for cells, reason in found]
        for _, cells, reason in sorted(every, key=lambda r: r[0]):
            rejects.add(cells, reason)
        counts["rejected"] = len(every)
        return counts


# --- jobs (API uploads run by a worker) -------------------------------------------------------

def accept_upload(upload, topic: str | None, author_id: int | None) -> ImportJob:
    """An uploaded CSV (a werkzeug FileStorage) checked and recorded as a queued job, flushed but
    not committed (see create_job). A missing file, an unknown topic or a file that is not a
    contacts CSV is a ValidationError now, not a failed job later; nothing is kept then."""
    import uuid

    if upload is None or not upload.filename:
        raise ValidationError("no file", {"file": "required: a CSV file sent as multipart field 'file'"})
    if topic and db.session.scalar(sa.select(Topic.id).where(Topic.slug == topic)) is None:
        raise ValidationError("unknown topic", {"topic": f"no topic {topic!r}"})
    folder = current_app.config["IMPORT_DIR"]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{uuid.uuid4().hex}.csv")
    upload.save(path)
    try:
        read_layout(path)
    except ValidationError:
        os.remove(path)
        raise
    return create_job(os.path.basename(upload.filename), path, topic=topic, author_id=author_id)


def create_job(filename: str, path: str, *, topic: str | None, author_id: int | None) -> ImportJob:
    """Record an uploaded file as a queued import, flushed but not committed.

    The caller answers from the job before committing: once committed, a worker may already be
    running it, and the answer is what was accepted. The worker is enqueued by the commit."""
    from envoi.tasks import enqueue_after_commit
    from workers.actors import run_import

    job = ImportJob(filename=filename[:300], path=path, status="queued", options={"topic": topic} if topic else {},
                    author_id=author_id)
    db.session.add(job)
    db.session.flush()
    enqueue_after_commit(run_import, job.id)
    return job


def run_import_job(job_id: int) -> None:
    """Run a queued import once: claim it with a conditional UPDATE, import, record the counts.

    A job already claimed or finished is left alone, so a redelivered message does nothing.
    A bad file (a permanent error) fails the job with its reason; anything else puts the job
    back in the queue and re-raises so the broker retries it (the import itself is idempotent).
    """
    jobs = ImportJob.__table__
    path = db.session.scalar(sa.select(jobs.c.path).where(jobs.c.id == job_id))
    try:
        size = os.path.getsize(path) if path else None
    except OSError:
        size = None  # import_csv names the problem
    claimed = db.session.execute(sa.update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued")
                                 .values(status="running", started_at=utcnow(), bytes_total=size, bytes_read=0,
                                         rows=0, created=0, updated=0, unchanged=0, rejected=0)).rowcount
    db.session.commit()
    if not claimed:
        log.info("import job %s is not queued; nothing to do", job_id)
        return
    job = db.session.get(ImportJob, job_id)
    rejects_path = os.path.join(current_app.config["IMPORT_DIR"], f"job-{job_id}.rejects.csv")

    def progress(bytes_read: int, result: ImportResult) -> None:
        # Committed after each chunk (the chunk itself is committed already), so the admin page and
        # GET /imports/{id} show the counts while the job runs.
        db.session.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
            bytes_read=bytes_read, rows=result.rows, created=result.created, updated=result.updated,
            unchanged=result.unchanged, rejected=result.rejected))
        db.session.commit()

    try:
        result = import_csv(job.path, topic=(job.options or {}).get("topic"), rejects_path=rejects_path,
                            author_id=job.author_id, progress=progress)
    except EnvoiError as err:
        db.session.rollback()
        detail = "; ".join(f"{k}: {v}" for k, v in err.fields.items())
        _finish(job_id, status="failed", error=f"{err.message}" + (f" ({detail})" if detail else ""))
        return
    except Exception:
        db.session.rollback()
        db.session.execute(sa.update(jobs).where(jobs.c.id == job_id).values(status="queued"))
        db.session.commit()
        raise
    _finish(job_id, status="done", bytes_read=size or 0, rows=result.rows, created=result.created, updated=result.updated,
            unchanged=result.unchanged, rejected=result.rejected, rejects_path=result.rejects_path, error=None)


def _finish(job_id: int, **values) -> None:
    jobs = ImportJob.__table__
    db.session.execute(sa.update(jobs).where(jobs.c.id == job_id).values(finished_at=utcnow(), **values))
    db.session.commit()


def requeue_stale_jobs() -> int:
    """Re-enqueue imports queued for more than 2 minutes (the broker lost or never got them),
    and put back in the queue those whose worker died while running. Returns how many were sent."""
    from workers.actors import run_import

    jobs = ImportJob.__table__
    now = utcnow()
    db.session.execute(sa.update(jobs).where(jobs.c.status == "running", jobs.c.started_at < now - LOST_AFTER)
                       .values(status="queued"))
    ids = db.session.scalars(sa.select(jobs.c.id).where(jobs.c.status == "queued",
                                                        jobs.c.created_at < now - STALE_AFTER)).all()
    db.session.commit()
    for job_id in ids:
        run_import.send(job_id)
    return len(ids)

