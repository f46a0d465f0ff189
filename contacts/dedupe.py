"""Likely duplicates in the customer file, and merging them without losing history.

`find_duplicates` groups contacts in SQL (GROUP BY over an expression per rule), so the
table is never loaded into Python; `merge_contacts` folds contacts into the oldest one in
one transaction. The rules:

- ``name_postcode``: same first and last name (ignoring case) and same postal code, all three set.
- ``name_birth_date``: same first and last name (ignoring case) and same birth date, all set.
- ``company_postcode``: same company name (ignoring case) and same postal code, both set.
- ``email_canonical``: the same mailbox written two ways: a ``+tag`` after the first character
  of the local part is dropped for every domain, and for gmail.com / googlemail.com the dots
  are dropped too and the domain is gmail.com (``Jean.Dupont+promo@googlemail.com`` is
  ``jeandupont@gmail.com``). Computed in SQL, so memory stays bounded whatever the table size.
- ``phone_email_split``: the person signed up once with an email and once with a phone: exactly
  one contact with an email and no phone and exactly one with a phone and no email share the
  same first and last name (ignoring case). Ambiguous names (two email-only Jean Dupont) are
  left to the other rules.

There is no "same phone" or "same email" rule: both columns are unique, so two contacts never
hold the same one. (A phone stored on one contact and known only as a custom attribute of
another is not looked for.) Erased contacts are never grouped nor merged.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from contacts.errors import NotFound, ValidationError
from contacts.models import PERSONAL_FIELDS, Action, ConsentEvent, Contact, ContactTopic, Purchase
from contacts.services import OPTED_OUT, log_action, refresh_purchase_aggregates
from envoi import MAX_ID
from envoi.errors import EnvoiError
from envoi.extensions import db
from envoi.types import utcnow
from automation.models import AutomationEvent, JourneyRun
from campaigns.models import Delivery, ShortLink
from segments.models import MessageEvent

RULES = ("name_postcode", "name_birth_date", "company_postcode", "email_canonical", "phone_email_split")
GMAIL_DOMAINS = ("gmail.com", "googlemail.com")

# Every table whose rows belong to a contact and follow the survivor of a merge. A new table
# with a contact_id (deliveries, journeys ...) is added here; one where contact_id is part of
# a unique key needs a rule for the rows both sides hold, as contact_topics has in _merge_topics.
REPOINT: list[tuple[type, sa.orm.InstrumentedAttribute]] = [
    (Action, Action.contact_id),
    (Purchase, Purchase.contact_id),
    # Consent proof is append-only for the ORM; a bulk UPDATE moves it without rewriting it.
    (ConsentEvent, ConsentEvent.contact_id),
    (MessageEvent, MessageEvent.contact_id),
    # One delivery per (campaign, contact): _drop_duplicate_deliveries runs first.
    (Delivery, Delivery.contact_id),
    (ShortLink, ShortLink.contact_id),  # SMS short links: their clicks count for the survivor
    # One run per (automation, contact, occurrence): automation.services.prepare_merge runs first.
    (JourneyRun, JourneyRun.contact_id),
    (AutomationEvent, AutomationEvent.contact_id),
]



def _drop_duplicate_deliveries(survivor_id: int, ids: list[int]) -> int:
    """Where several of the merged contacts got the same campaign, keep one delivery (the
    survivor's, else the oldest) so the (campaign, contact) uniqueness holds after the merge."""
    rank = sa.case((Delivery.contact_id == survivor_id, 0), else_=1)
    ranked = (sa.select(Delivery.id, sa.func.row_number().over(
        partition_by=Delivery.campaign_id, order_by=(rank, Delivery.id)).label("n"))
        .where(Delivery.contact_id.in_(ids), Delivery.campaign_id.isnot(None)).subquery())
    doomed = sa.select(ranked.c.id).where(ranked.c.n > 1)
    return db.session.execute(sa.delete(Delivery).where(Delivery.id.in_(doomed))).rowcount


# Which channel status a merged contact keeps: an opt-out on either side always stays.
STATUS_RANK = {"none": 0, "pending": 1, "confirmed": 2, **{s: 3 for s in OPTED_OUT}}
_NEVER = datetime.min.replace(tzinfo=timezone.utc)
# Group keys per members query: well under the bound-parameter limits of SQLite and psycopg.
_KEYS_PER_QUERY = 500


@dataclass(frozen=True)
class DuplicateGroup:
    rule: str
    contact_ids: list[int]  # oldest first: the first one survives a merge
    values: dict = field(default_factory=dict)

    @property
    def survivor_id(self) -> int:
        return self.contact_ids[0]


# --- finding ----------------------------------------------------------------------------------

class _strpos(FunctionElement):
    """1-based position of a substring, 0 when absent (strpos on PostgreSQL, instr on SQLite)."""

    type = sa.Integer()
    name = "strpos"
    inherit_cache = True


@compiles(_strpos)
def _strpos_default(element, compiler, **kw):
    return f"strpos({compiler.process(element.clauses, **kw)})"


@compiles(_strpos, "sqlite")
def _strpos_sqlite(element, compiler, **kw):
    return f"instr({compiler.process(element.clauses, **kw)})"


def canonical_email(column):
    """SQL expression: the address without its +tag, and without dots for Gmail."""
    text = sa.String()
    at = _strpos(column, "@")
    local = sa.func.substr(column, 1, at - 1, type_=text)
    domain = sa.func.substr(column, at + 1, type_=text)
    plus = _strpos(local, "+")
    bare = sa.case((plus > 1, sa.func.substr(local, 1, plus - 1, type_=text)), else_=local)
    return sa.case((domain.in_(GMAIL_DOMAINS), sa.func.replace(bare, ".", "", type_=text) + "@gmail.com"),
                   else_=bare + "@" + domain)


def _set(column):
    return sa.and_(column.is_not(None), sa.func.trim(column) != "")


def _rule(name: str):
    """(key expressions by name, conditions on the contact, extra HAVING on the grouped rows)."""
    first, last = sa.func.lower(Contact.first_name), sa.func.lower(Contact.last_name)
    names = [_set(Contact.first_name), _set(Contact.last_name)]
    if name == "name_postcode":
        return {"first_name": first, "last_name": last, "postal_code": Contact.postal_code}, \
            [*names, _set(Contact.postal_code)], None
    if name == "name_birth_date":
        return {"first_name": first, "last_name": last, "birth_date": Contact.birth_date}, \
            [*names, Contact.birth_date.is_not(None)], None
    if name == "company_postcode":
        return {"company_name": sa.func.lower(Contact.company_name), "postal_code": Contact.postal_code}, \
            [_set(Contact.company_name), _set(Contact.postal_code)], None
    if name == "email_canonical":
        return {"email": canonical_email(Contact.email)}, [Contact.email.is_not(None)], None
    if name == "phone_email_split":
        only_email = sa.and_(Contact.email.is_not(None), Contact.phone.is_(None))
        only_phone = sa.and_(Contact.phone.is_not(None), Contact.email.is_(None))

        def one_of_each(rows):
            return [sa.func.sum(sa.case((rows.c.email.is_not(None), 1), else_=0)) == 1,
                    sa.func.sum(sa.case((rows.c.phone.is_not(None), 1), else_=0)) == 1]

        return {"first_name": first, "last_name": last}, [*names, sa.or_(only_email, only_phone)], one_of_each
    raise ValidationError("unknown dedupe rule", {"rule": f"{name!r}; one of {', '.join(RULES)}"})


def _find(rule: str, limit: int) -> list[DuplicateGroup]:
    keys, where, having = _rule(rule)
    exprs = list(keys.values())
    conds = [Contact.erased_at.is_(None), *where]
    rows = sa.select(*(expr.label(f"key_{k}") for k, expr in keys.items()), Contact.id,
                     Contact.email, Contact.phone).where(*conds).subquery("candidates")
    key_cols = [rows.c[f"key_{k}"] for k in keys]
    found = db.session.execute(
        sa.select(*key_cols).group_by(*key_cols)
        .having(sa.func.count() > 1, *(having(rows) if having else ()))
        .order_by(sa.func.min(rows.c.id)).limit(limit)).all()
    # The members in a second query, by key: joining the grouped rows back to the candidates
    # makes the planners recompute the key expression per pair (40 s instead of 2 s on 200k contacts).
    members: dict[tuple, list[int]] = {tuple(r): [] for r in found}
    keys_found = list(members)
    for start in range(0, len(keys_found), _KEYS_PER_QUERY):
        chunk = keys_found[start:start + _KEYS_PER_QUERY]
        match = exprs[0].in_([k[0] for k in chunk]) if len(exprs) == 1 else sa.tuple_(*exprs).in_(chunk)
        for row in db.session.execute(sa.select(Contact.id, *exprs).where(*conds, match)
                                      .order_by(Contact.created_at, Contact.id)):
            members[tuple(row[1:])].append(row[0])
    return [DuplicateGroup(rule, ids, {k: _jsonable(v) for k, v in zip(keys, key)})
            for key, ids in members.items()]


def find_duplicates(rules: Iterable[str] | None = None, limit: int = 100) -> list[DuplicateGroup]:
    """Groups of likely duplicates by the given rules (all by default), at most `limit` groups.

    Each group lists contact ids oldest first (the survivor of a merge), the rule that matched
    and the values the contacts share. A contact may appear in groups of several rules.
    """
    rules = list(dict.fromkeys(rules or RULES))
    for name in rules:
        if name not in RULES:
            raise ValidationError("unknown dedupe rule", {"rule": f"{name!r}; one of {', '.join(RULES)}"})
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError("invalid limit", {"limit": "a whole number, 1 or more"})
    groups: list[DuplicateGroup] = []
    for name in rules:
        if len(groups) >= limit:
            break
        groups.extend(_find(name, limit - len(groups)))
    return groups


# --- merging ----------------------------------------------------------------------------------

def merge_contacts(survivor_id: int, other_ids: Iterable[int], author_id: int | None = None) -> dict:
    """Fold `other_ids` into `survivor_id` in one transaction, keeping all their history.

    Actions, purchases and consent events move to the survivor; topic links are united
    (subscribed if either was); the survivor's empty fields are filled from the others (a
    value it has is never overwritten), tags are united and attributes merged (the survivor
    wins); an opt-out on any side stays. A `merge` action on the survivor records the merged
    ids and what was taken; then the others are deleted. Returns that record.

    Raises NotFound for unknown ids and ValidationError for erased contacts or a contact
    merged with itself.
    """
    survivor_id, others = _check_ids(survivor_id, other_ids)
    try:
        result = _merge(survivor_id, others, author_id)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return result


def _check_ids(survivor_id, other_ids) -> tuple[int, list[int]]:
    try:
        survivor_id = int(survivor_id)
        others = list(dict.fromkeys(int(i) for i in other_ids))
    except (TypeError, ValueError):
        raise ValidationError("invalid merge", {"ids": "contact ids are whole numbers"}) from None
    if not others:
        raise ValidationError("nothing to merge", {"other_ids": "give at least one contact to merge"})
    if survivor_id in others:
        raise ValidationError("a contact cannot be merged with itself",
                              {"other_ids": f"contact {survivor_id} is the survivor"})
    return survivor_id, others


def _merge(survivor_id: int, others: list[int], author_id) -> dict:
    ids = [survivor_id, *others]
    unknown = [i for i in ids if not 0 < i <= MAX_ID]
    # Lock every contact of the merge (in id order, as the purchase service does) and read it fresh.
    found = {} if unknown else {c.id: c for c in db.session.scalars(
        sa.select(Contact).where(Contact.id.in_(ids)).order_by(Contact.id).with_for_update()
        .execution_options(populate_existing=True))}
    unknown += [i for i in ids if i not in found and i not in unknown]
    if unknown:
        raise NotFound(f"no contact {', '.join(map(str, unknown))}", {"ids": "unknown contact(s)"})
    erased = [i for i in ids if found[i].erased_at is not None]
    if erased:
        raise ValidationError("erased contacts cannot be merged",
                              {"ids": f"contact(s) {', '.join(map(str, erased))} were erased"})
    survivor, merged = found[survivor_id], [found[i] for i in others]

    moved = {"deliveries_dropped": _drop_duplicate_deliveries(survivor_id, ids)}
    from automation.services import prepare_merge

    moved["journey_runs_set_aside"] = prepare_merge(survivor_id, ids)
    for model, column in REPOINT:
        moved[model.__tablename__] = db.session.execute(
            sa.update(model).where(column.in_(others)).values({column: survivor_id})).rowcount
    moved["contact_topics"] = _merge_topics(survivor, ids)
    taken = _merge_fields(survivor, merged)
    record = [{"id": c.id, "email": c.email, "phone": c.phone, "created_at": _jsonable(c.created_at)}
              for c in merged]
    email_phone = {f: next((getattr(c, f) for c in merged if getattr(c, f)), None)
                   for f in ("email", "phone") if not getattr(survivor, f)}

    for contact in merged:
        db.session.delete(contact)  # its topic links go with it (ORM cascade)
    # The unique email and phone must leave the merged contacts before the survivor takes them.
    db.session.flush()
    for f, value in email_phone.items():
        if value:
            setattr(survivor, f, value)
            taken[f] = value
    refresh_purchase_aggregates({survivor_id})
    survivor.updated_at = utcnow()
    data = {"merged_ids": others, "taken": taken, "moved": moved, "merged": record}
    log_action(survivor_id, "merge", data, author_id=author_id)
    db.session.flush()
    return {"survivor_id": survivor_id, **data}


def _merge_topics(survivor: Contact, ids: list[int]) -> int:
    """One link per topic: subscribed if any side was, the latest updated_at. Returns links added."""
    best: dict[int, tuple[bool, datetime]] = {}
    for link in db.session.scalars(sa.select(ContactTopic).where(ContactTopic.contact_id.in_(ids))):
        subscribed, at = best.get(link.topic_id, (False, link.updated_at))
        best[link.topic_id] = (subscribed or link.subscribed, max(at, link.updated_at))
    own = {link.topic_id: link for link in survivor.topic_links}
    added = 0
    for topic_id, (subscribed, at) in best.items():
        link = own.get(topic_id)
        if link is None:
            survivor.topic_links.append(ContactTopic(topic_id=topic_id, subscribed=subscribed, updated_at=at))
            added += 1
        elif (link.subscribed, link.updated_at) != (subscribed, at):
            link.subscribed, link.updated_at = subscribed, at
    return added


def _empty(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _merge_fields(survivor: Contact, merged: list[Contact]) -> dict:
    """Fill the survivor from the others (oldest first); returns what was taken, JSON-ready."""
    taken: dict = {}
    for name in PERSONAL_FIELDS:
        if name == "lifecycle":
            # prospect is the default, not a value: a customer (or former one) is what we know.
            value = next((c.lifecycle for c in merged if c.lifecycle != "prospect"), None)
            if survivor.lifecycle == "prospect" and value:
                survivor.lifecycle = taken[name] = value
            continue
        if _empty(getattr(survivor, name)):
            value = next((getattr(c, name) for c in merged if not _empty(getattr(c, name))), None)
            if value is not None:
                setattr(survivor, name, value)
                taken[name] = _jsonable(value)
    tags = set(survivor.tags or [])
    added = sorted(set().union(*(c.tags or [] for c in merged)) - tags)
    if added:
        survivor.tags = sorted(tags | set(added))
        taken["tags"] = added
    attrs = dict(survivor.attributes or {})
    new_attrs = {}
    for contact in merged:
        for key, value in (contact.attributes or {}).items():
            if key not in attrs and key not in new_attrs:
                new_attrs[key] = value
    if new_attrs:
        survivor.attributes = {**attrs, **new_attrs}
        taken["attributes"] = new_attrs
    for channel in ("email", "sms"):
        status, at = f"{channel}_status", f"{channel}_status_at"
        winner = max([survivor, *merged], key=lambda c: (STATUS_RANK.get(getattr(c, status), 0),
                                                          getattr(c, at) or _NEVER))
        if (getattr(winner, status), getattr(winner, at)) != (getattr(survivor, status), getattr(survivor, at)):
            setattr(survivor, status, getattr(winner, status))
            setattr(survivor, at, getattr(winner, at))
            taken[status] = getattr(winner, status)
    earliest = min(c.created_at for c in [survivor, *merged])
    if earliest < survivor.created_at:
        survivor.created_at = earliest
        taken["created_at"] = _jsonable(earliest)
    activity = [c.last_activity_at for c in [survivor, *merged] if c.last_activity_at]
    if activity:
        survivor.last_activity_at = max(activity)
    return taken


def merge_groups(groups: Iterable[DuplicateGroup], author_id: int | None = None
                 ) -> Iterator[tuple[DuplicateGroup, dict | EnvoiError | None]]:
    """Merge each group into its oldest contact; yields (group, merge record or the error).

    Groups may overlap (one pair found by two rules): ids already merged stand for their
    survivor, and a group left with one contact yields None. Each group is its own transaction.
    """
    moved_to: dict[int, int] = {}

    def current(i: int) -> int:
        while i in moved_to:
            i = moved_to[i]
        return i

    for group in groups:
        ids = list(dict.fromkeys(current(i) for i in group.contact_ids))
        if len(ids) < 2:
            yield group, None
            continue
        oldest = db.session.scalar(sa.select(Contact.id).where(Contact.id.in_(ids))
                                   .order_by(Contact.created_at, Contact.id).limit(1)) or ids[0]
        try:
            result = merge_contacts(oldest, [i for i in ids if i != oldest], author_id=author_id)
        except EnvoiError as err:
            yield group, err
            continue
        moved_to.update({i: oldest for i in result["merged_ids"]})
        yield group, result


def _jsonable(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value
