"""Duplicates: each rule finds its groups and no false ones; merging keeps all history."""
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from contacts import services
from contacts.dedupe import REPOINT, DuplicateGroup, find_duplicates, merge_contacts
from contacts.errors import NotFound, ValidationError
from contacts.models import Action, ConsentEvent, Contact, ContactTopic, Purchase, Topic
from envoi.extensions import db
from segments.models import MessageEvent

CONSENT = {"source": "salon", "at": "2024-03-01T09:00:00Z", "text": "Oui"}


def person(**fields) -> int:
    return services.upsert_contact(fields)[0].id


def ids(groups):
    return [(g.rule, g.contact_ids) for g in groups]


# --- finding ----------------------------------------------------------------------------------

def test_name_postcode(ctx):
    a = person(email="marie@example.org", first_name="Marie", last_name="Curie", postal_code="75005")
    b = person(phone="0612345678", first_name="MARIE", last_name="curie", postal_code="75005")
    person(email="marie@lyon.example", first_name="Marie", last_name="Curie", postal_code="69001")
    person(email="x@example.org", last_name="Curie", postal_code="75005")
    person(email="y@example.org", last_name="Curie", postal_code="75005")
    person(email="pierre@example.org", first_name="Pierre", last_name="Curie", postal_code="75005")
    erased = person(email="old@example.org", first_name="Marie", last_name="Curie", postal_code="75005")
    services.erase_contact(erased)
    assert find_duplicates(["name_postcode"]) == [DuplicateGroup(
        "name_postcode", [a, b], {"first_name": "marie", "last_name": "curie", "postal_code": "75005"})]


def test_name_birth_date(ctx):
    a = person(email="a@example.org", first_name="Jean", last_name="Dupont", birth_date="1970-01-02")
    b = person(email="b@example.org", first_name="jean", last_name="DUPONT", birth_date="1970-01-02")
    c = person(email="c@example.org", first_name="Jean", last_name="Dupont", birth_date="1970-01-02")
    person(email="d@example.org", first_name="Jean", last_name="Dupont", birth_date="1971-01-02")
    person(email="e@example.org", first_name="Jean", last_name="Dupont")
    person(email="f@example.org", first_name="Jeanne", last_name="Dupont", birth_date="1970-01-02")
    groups = find_duplicates(["name_birth_date"])
    assert ids(groups) == [("name_birth_date", [a, b, c])]
    assert groups[0].values == {"first_name": "jean", "last_name": "dupont", "birth_date": "1970-01-02"}


def test_company_postcode(ctx):
    a = person(email="a@acme.example", company_name="ACME", postal_code="69001")
    b = person(email="b@acme.example", company_name="Acme", postal_code="69001")
    person(email="c@acme.example", company_name="Acme", postal_code="69002")
    person(email="d@acme.example", postal_code="69001")
    person(email="e@acme.example", postal_code="69001")
    assert ids(find_duplicates(["company_postcode"])) == [("company_postcode", [a, b])]


def test_email_canonical(ctx):
    g1 = person(email="jean.dupont@gmail.com")
    g2 = person(email="JeanDupont+promo@googlemail.com")
    g3 = person(email="jeandupont@gmail.com")
    a1 = person(email="anne+news@example.org")
    a2 = person(email="anne@example.org")
    person(email="anne.b@example.org")     # dots only matter for Gmail
    person(email="anne@example.com")       # another domain
    person(email="+x@example.org")         # a bare +tag is the whole local part, not a tag
    person(email="+y@example.org")
    person(phone="0612345678")
    groups = find_duplicates(["email_canonical"])
    assert ids(groups) == [("email_canonical", [g1, g2, g3]), ("email_canonical", [a1, a2])]
    assert [g.values for g in groups] == [{"email": "jeandupont@gmail.com"}, {"email": "anne@example.org"}]


def test_phone_email_split(ctx):
    a = person(email="luc@example.org", first_name="Luc", last_name="Martin")
    b = person(phone="0612345678", first_name="luc", last_name="martin")
    # Ambiguous: two email-only Eva Roux and one phone-only; left to the other rules.
    person(email="eva1@example.org", first_name="Eva", last_name="Roux")
    person(email="eva2@example.org", first_name="Eva", last_name="Roux")
    person(phone="0612345679", first_name="Eva", last_name="Roux")
    # Both have an email: not a split.
    person(email="paul1@example.org", first_name="Paul", last_name="Durand")
    person(email="paul2@example.org", first_name="Paul", last_name="Durand")
    # Has both: not a split either.
    person(email="zoe@example.org", phone="0612345670", first_name="Zoé", last_name="Blanc")
    person(phone="0612345671", first_name="Zoé", last_name="Blanc")
    # No names.
    person(email="anon@example.org")
    person(phone="0612345672")
    assert ids(find_duplicates(["phone_email_split"])) == [("phone_email_split", [a, b])]


def test_all_rules_limit_and_unknown_rule(ctx):
    a = person(email="luc@example.org", first_name="Luc", last_name="Martin", postal_code="75001")
    b = person(phone="0612345678", first_name="Luc", last_name="Martin", postal_code="75001")
    assert ids(find_duplicates()) == [("name_postcode", [a, b]), ("phone_email_split", [a, b])]
    assert ids(find_duplicates(limit=1)) == [("name_postcode", [a, b])]
    with pytest.raises(ValidationError):
        find_duplicates(["same_shoe_size"])
    with pytest.raises(ValidationError):
        find_duplicates(limit=0)


# --- merging ----------------------------------------------------------------------------------

def _rows(model, contact_id):
    return db.session.scalars(sa.select(model).where(model.contact_id == contact_id).order_by(model.id)).all()


def test_merge_keeps_history_fills_fields_and_opt_out_wins(ctx):
    for slug in ("news", "offers", "events"):
        services.create_topic(slug, slug.title())
    services.define_attribute("shoe", "string")
    services.define_attribute("size", "string")
    s = person(email="marie@example.org", first_name="Marie", last_name="Curie", postal_code="75005",
               tags=["vip"], attributes={"shoe": "38"}, topics=["news"], email_status="confirmed", consent=CONSENT)
    o = person(phone="0612345678", first_name="marie", last_name="curie", postal_code="75005", city="Paris",
               birth_date="1980-11-07", tags=["paris", "vip"], attributes={"shoe": "39", "size": "M"},
               topics=["offers", "news"], sms_status="confirmed", consent=CONSENT)
    t = person(email="marie+promo@example.org", company_name="Curie SA", email_status="unsubscribed",
               topics=["events"])
    person(email="marie+promo@example.org", topics=[])  # unsubscribes from events
    services.record_action(s, "call")
    services.record_action(o, "note", data={"text": "prefers SMS"})
    services.record_action(t, "meeting")
    # No service writes message events yet (campaign dispatch will): insert one as it would.
    db.session.add(MessageEvent(contact_id=t, channel="email", kind="opened"))
    db.session.commit()
    services.record_purchases([
        {"contact": {"id": s}, "sku": "C", "amount": "1", "currency": "EUR", "occurred_at": "2023-05-01T10:00:00Z"},
        {"contact": {"id": o}, "sku": "A", "amount": "10", "currency": "EUR", "occurred_at": "2024-01-01T10:00:00Z"},
        {"contact": {"id": t}, "sku": "B", "amount": "5.50", "currency": "EUR", "occurred_at": "2024-06-01T10:00:00Z"},
    ])
    actions = {a.id for c in (s, o, t) for a in _rows(Action, c)}
    consents = {e.id for c in (s, o, t) for e in _rows(ConsentEvent, c)}
    purchases = {p.id for c in (s, o, t) for p in _rows(Purchase, c)}
    events = {e.id for e in _rows(MessageEvent, t)}
    sms_at = db.session.get(Contact, o).sms_status_at
    email_opt_out_at = db.session.get(Contact, t).email_status_at
    created = db.session.get(Contact, s).created_at
    db.session.expire_all()

    result = merge_contacts(s, [o, t])

    db.session.expire_all()
    assert db.session.get(Contact, o) is None and db.session.get(Contact, t) is None
    survivor = db.session.get(Contact, s)
    kept = {a.id for a in _rows(Action, s)}
    assert actions < kept and len(kept) == len(actions) + 1
    merge = db.session.scalars(sa.select(Action).where(Action.contact_id == s, Action.kind == "merge")).one()
    assert merge.data["merged_ids"] == [o, t] and merge.data == {k: v for k, v in result.items() if k != "survivor_id"}
    assert merge.data["taken"]["phone"] == "+33612345678" and merge.data["taken"]["city"] == "Paris"
    assert [m["email"] for m in merge.data["merged"]] == [None, "marie+promo@example.org"]
    assert {e.id for e in _rows(ConsentEvent, s)} == consents
    assert {p.id for p in _rows(Purchase, s)} == purchases
    assert {e.id for e in _rows(MessageEvent, s)} == events and len(events) == 1
    assert (survivor.purchase_count, survivor.purchase_total) == (3, Decimal("16.50"))
    assert survivor.first_purchase_at == datetime(2023, 5, 1, 10, tzinfo=timezone.utc)
    assert survivor.last_purchase_at == datetime(2024, 6, 1, 10, tzinfo=timezone.utc)
    assert survivor.lifecycle == "customer"
    links = {link.topic.slug: link.subscribed for link in _rows_topics(s)}
    assert links == {"news": True, "offers": True, "events": False}
    # Empty fields filled, set ones kept.
    assert (survivor.email, survivor.phone) == ("marie@example.org", "+33612345678")
    assert (survivor.first_name, survivor.last_name) == ("Marie", "Curie")
    assert (survivor.city, survivor.birth_date, survivor.company_name) == ("Paris", date(1980, 11, 7), "Curie SA")
    assert survivor.tags == ["paris", "vip"]
    assert survivor.attributes == {"shoe": "38", "size": "M"}
    # The opt-out of the +promo address wins over the survivor's confirmation; SMS comes from o.
    assert (survivor.email_status, survivor.email_status_at) == ("unsubscribed", email_opt_out_at)
    assert (survivor.sms_status, survivor.sms_status_at) == ("confirmed", sms_at)
    assert survivor.created_at == created
    assert services.find_contact(phone="+33612345678").id == s
    assert find_duplicates() == []


def _rows_topics(contact_id):
    return db.session.scalars(sa.select(ContactTopic).join(Topic).where(ContactTopic.contact_id == contact_id)).all()


def test_merge_takes_the_others_email_and_earliest_creation(ctx):
    older = person(email="luc@example.org", first_name="Luc", last_name="Martin")
    newer = person(phone="0612345678", first_name="Luc", last_name="Martin", sms_status="unsubscribed")
    created = db.session.get(Contact, older).created_at
    # Merging into the newer one: it takes the address (unique, so it leaves the other first).
    result = merge_contacts(newer, [older])
    assert result["taken"]["email"] == "luc@example.org"
    db.session.expire_all()
    survivor = services.find_contact(email="luc@example.org")
    assert survivor.id == newer and survivor.created_at == created
    assert survivor.sms_status == "unsubscribed" and survivor.email_status == "none"


def test_merge_refuses_erased_self_and_unknown(ctx):
    a = person(email="a@example.org")
    b = person(email="b@example.org")
    services.record_action(b, "call")
    gone = person(email="gone@example.org")
    services.erase_contact(gone)
    with pytest.raises(ValidationError, match="erased"):
        merge_contacts(a, [b, gone])
    with pytest.raises(ValidationError, match="erased"):
        merge_contacts(gone, [a])
    with pytest.raises(ValidationError, match="itself"):
        merge_contacts(a, [a])
    with pytest.raises(ValidationError):
        merge_contacts(a, [])
    with pytest.raises(NotFound):
        merge_contacts(a, [b, 999_999])
    with pytest.raises(NotFound):
        merge_contacts(999_999, [a])
    with pytest.raises(NotFound):
        merge_contacts(a, [10**30])
    db.session.expire_all()
    # Nothing moved by the refused merges.
    assert db.session.get(Contact, b) is not None and len(_rows(Action, b)) == 1
    assert db.session.scalar(sa.select(sa.func.count(Action.id)).where(Action.kind == "merge")) == 0


def test_merge_keeps_one_delivery_per_campaign(ctx):
    from campaigns.models import Campaign, Delivery

    survivor = person(email="s@example.org")
    other = person(email="o@example.org")
    both, only_other = Campaign(name="both", channel="email"), Campaign(name="other", channel="email")
    db.session.add_all([both, only_other])
    db.session.flush()
    db.session.add_all([Delivery(campaign_id=both.id, contact_id=other, channel="email", status="sent"),
                        Delivery(campaign_id=both.id, contact_id=survivor, channel="email", status="sent"),
                        Delivery(campaign_id=only_other.id, contact_id=other, channel="email", status="sent")])
    db.session.commit()

    result = merge_contacts(survivor, [other])

    assert result["moved"]["deliveries_dropped"] == 1 and result["moved"]["deliveries"] == 1
    rows = db.session.execute(sa.select(Delivery.campaign_id, Delivery.contact_id).order_by(Delivery.campaign_id)).all()
    assert rows == [(both.id, survivor), (only_other.id, survivor)]


def test_every_table_pointing_at_contacts_is_merged(ctx):
    handled = {model.__table__.name for model, _ in REPOINT} | {ContactTopic.__tablename__}
    pointing = {table.name for table in db.metadata.sorted_tables
                for fk in table.foreign_keys if fk.column.table.name == "contacts"}
    assert pointing <= handled, f"add {pointing - handled} to contacts.dedupe.REPOINT"


# --- CLI --------------------------------------------------------------------------------------

def test_cli_reports_then_merges(ctx):
    runner = ctx.test_cli_runner()
    a = person(email="luc@example.org", first_name="Luc", last_name="Martin", postal_code="75001")
    b = person(phone="0612345678", first_name="Luc", last_name="Martin", postal_code="75001")
    person(email="solo@example.org", first_name="Solo", last_name="Alone", postal_code="75001")
    services.record_action(b, "call")

    result = runner.invoke(args=["contacts", "dedupe"])
    assert result.exit_code == 0, result.output
    assert f"#1 name_postcode: contacts {a}, {b} (first_name=luc, last_name=martin, postal_code=75001)" in result.output
    assert f"#2 phone_email_split: contacts {a}, {b}" in result.output
    assert "2 group(s) of likely duplicates, 2 contact(s)" in result.output

    result = runner.invoke(args=["contacts", "dedupe", "--rule", "name_postcode", "--merge"], input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
    assert services.find_contact(phone="+33612345678").id == b

    result = runner.invoke(args=["contacts", "dedupe", "--merge", "--yes"])
    assert result.exit_code == 0, result.output
    assert f"#1 merged {b} into {a}: moved 1 actions" in result.output and "took phone=+33612345678" in result.output
    assert "#2 skipped: already merged" in result.output and "merged 1 contact(s)" in result.output
    db.session.expire_all()
    assert services.find_contact(phone="+33612345678").id == a
    assert db.session.get(Contact, b) is None

    result = runner.invoke(args=["contacts", "dedupe"])
    assert "0 group(s) of likely duplicates" in result.output


def test_cli_rejects_unknown_rule(ctx):
    result = ctx.test_cli_runner().invoke(args=["contacts", "dedupe", "--rule", "same_shoe_size"])
    assert result.exit_code == 2
    assert "Invalid value for '--rule'" in result.output and "name_postcode" in result.output
