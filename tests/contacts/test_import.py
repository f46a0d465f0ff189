"""CSV import through the CLI and the service, on the real database (SQLite or PostgreSQL)."""
import csv
from datetime import timedelta

import pytest
import sqlalchemy as sa

from contacts import services
from contacts.importer import import_csv
from contacts.models import ConsentEvent, Contact, ContactTopic
from envoi.extensions import db
from envoi.types import utcnow


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def cli(app, *args):
    return app.test_cli_runner().invoke(args=["contacts", *args], catch_exceptions=False)


def contacts():
    return {c.email or c.phone: c for c in db.session.scalars(sa.select(Contact))}


def events():
    return db.session.scalars(sa.select(ConsentEvent).order_by(ConsentEvent.id)).all()


def rejects(path, delimiter=","):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


BASIC = """email,phone,first_name,last_name,city,tags,lifecycle
Anne.Martin@Example.fr,06 12 34 56 78,Anne,Martin,Lyon,vip|Newsletter,customer
bob@example.com,,Bob,Durand,Paris,,
not-an-email,12,Bad,Row,Nice,,
,,Nobody,Here,Nice,,
carl@example.com,,Carl,,Lyon,,alien
"""


def test_cli_import_counts_rejects_and_idempotent_reimport(app, ctx, tmp_path):
    path = write(tmp_path / "people.csv", BASIC)
    res = cli(app, "import", path)
    assert res.exit_code == 0, res.output
    assert "5 rows: 2 created, 0 updated, 0 unchanged, 3 rejected" in res.output
    assert str(tmp_path / "people.rejects.csv") in res.output
    rows = rejects(tmp_path / "people.rejects.csv")
    assert [r["first_name"] for r in rows] == ["Bad", "Nobody", "Carl"]
    assert rows[0]["reason"].startswith("email: ") and "; phone: " in rows[0]["reason"]
    assert rows[1]["reason"] == "email: an email or a phone is required"
    assert rows[2]["reason"].startswith("lifecycle: one of")
    found = contacts()
    anne = found["anne.martin@example.fr"]
    assert (anne.phone, anne.first_name, anne.city, anne.tags, anne.lifecycle) == \
        ("+33612345678", "Anne", "Lyon", ["newsletter", "vip"], "customer")
    assert anne.email_status == "none" and found["bob@example.com"].lifecycle == "prospect"
    stamp = anne.updated_at
    db.session.rollback()

    res = cli(app, "import", path)
    assert "5 rows: 0 created, 0 updated, 2 unchanged, 3 rejected" in res.output
    db.session.expire_all()
    assert contacts()["anne.martin@example.fr"].updated_at == stamp
    assert events() == []


def test_update_keeps_what_the_file_leaves_empty_and_later_row_wins(app, ctx, tmp_path):
    services.upsert_contact({"email": "anne@example.fr", "first_name": "Anne", "city": "Lyon", "tags": ["old"]})
    path = write(tmp_path / "u.csv", "email,phone,city,tags\n"
                 "anne@example.fr,,Paris,\n"
                 "ANNE@example.fr,0612345678,Marseille,new\n"
                 "zoe@example.fr,,Nice,\n"
                 "zoe@example.fr,,Nice,\n")
    result = import_csv(path)
    assert (result.rows, result.created, result.updated, result.unchanged, result.rejected) == (4, 1, 2, 1, 0)
    anne = contacts()["anne@example.fr"]
    assert (anne.first_name, anne.city, anne.phone, anne.tags) == ("Anne", "Marseille", "+33612345678", ["new"])


def test_row_matching_two_contacts_is_rejected(app, ctx, tmp_path):
    services.upsert_contact({"email": "a@example.fr"})
    other, _ = services.upsert_contact({"email": "b@example.fr", "phone": "0611111111"})
    path = write(tmp_path / "x.csv", "email,phone\na@example.fr,06 11 11 11 11\n")
    result = import_csv(path)
    assert result.rejected == 1
    assert rejects(result.rejects_path)[0]["reason"].startswith(f"phone: already the phone of contact {other.id}")


def test_confirmed_needs_consent_and_records_events_like_the_api(app, ctx, tmp_path):
    path = write(tmp_path / "c.csv", "email,email_status,consent_source,consent_at,consent_text\n"
                 "ok@example.fr,confirmed,shop Lyon,2024-03-01T10:00:00Z,J'accepte\n"
                 "no@example.fr,confirmed,,,\n"
                 "half@example.fr,confirmed,,2024-03-01,\n"
                 "plain@example.fr,,,,\n")
    result = import_csv(path)
    assert (result.created, result.rejected) == (2, 2)
    reasons = [r["reason"] for r in rejects(result.rejects_path)]
    assert reasons[0].startswith("email_status: setting confirmed needs a consent")
    assert reasons[1].startswith("consent_source: required")
    found = contacts()
    assert found["ok@example.fr"].email_status == "confirmed"
    assert found["plain@example.fr"].email_status == "none"
    (event,) = events()
    assert (event.contact_id, event.kind, event.channel, event.method, event.source, event.text) == \
        (found["ok@example.fr"].id, "granted", "email", "import", "shop Lyon", "J'accepte")
    assert event.consented_at.isoformat() == "2024-03-01T10:00:00+00:00"
    assert import_csv(path).unchanged == 2 and len(events()) == 1


def test_suppressed_addresses_are_rejected(app, ctx, tmp_path):
    gone, _ = services.upsert_contact({"email": "gone@example.fr", "phone": "0622222222"})
    services.erase_contact(gone.id)
    path = write(tmp_path / "s.csv", "email,phone\ngone@example.fr,\n,06 22 22 22 22\nnew@example.fr,\n")
    result = import_csv(path)
    assert (result.created, result.rejected) == (1, 2)
    reasons = [r["reason"] for r in rejects(result.rejects_path)]
    assert reasons[0].startswith("email: erased") and reasons[1].startswith("phone: erased")


def test_unsubscribed_is_not_reconfirmed_by_an_older_consent(app, ctx, tmp_path):
    contact, _ = services.upsert_contact({"email": "u@example.fr", "email_status": "unsubscribed", "city": "Lyon"})
    old = (utcnow() - timedelta(days=30)).isoformat()
    path = write(tmp_path / "o.csv", "email,city,email_status,consent_source,consent_at\n"
                 f"u@example.fr,Paris,confirmed,old list,{old}\n")
    result = import_csv(path)
    assert (result.updated, result.stale_consents) == (1, 1)
    db.session.expire_all()
    contact = db.session.get(Contact, contact.id)
    assert (contact.email_status, contact.city) == ("unsubscribed", "Paris")
    assert [e.kind for e in events()] == ["withdrawn"]

    fresh = (utcnow() + timedelta(seconds=1)).isoformat()
    write(tmp_path / "o.csv", f"email,email_status,consent_source,consent_at\nu@example.fr,confirmed,new form,{fresh}\n")
    assert import_csv(str(tmp_path / "o.csv")).updated == 1
    db.session.expire_all()
    assert db.session.get(Contact, contact.id).email_status == "confirmed"


def test_topic_option_subscribes_every_row_once(app, ctx, tmp_path):
    topic = services.create_topic("news", "News")
    services.create_topic("offers", "Offers")
    services.upsert_contact({"email": "old@example.fr"})
    path = write(tmp_path / "t.csv", "email,topics\nold@example.fr,\nnew@example.fr,offers\nbad@example.fr,nope\n")
    res = cli(app, "import", path, "--topic", "news")
    assert "3 rows: 1 created, 1 updated, 0 unchanged, 1 rejected" in res.output, res.output
    assert rejects(tmp_path / "t.rejects.csv")[0]["reason"] == "topics: unknown topic(s): nope"
    links = db.session.execute(sa.select(ContactTopic.contact_id, ContactTopic.topic_id)).all()
    assert len(links) == 3
    assert sum(e.topic_id == topic.id for e in events()) == 2
    assert all(e.method == "import" and e.kind == "granted" for e in events())
    res = cli(app, "import", path, "--topic", "news")
    assert "0 created, 0 updated, 2 unchanged" in res.output


def test_withdrawn_topic_is_not_resubscribed_without_a_newer_consent(app, ctx, tmp_path):
    topic = services.create_topic("news", "News")
    contact, _ = services.upsert_contact({"email": "w@example.fr", "topics": ["news"]})
    services.upsert_contact({"email": "w@example.fr", "topics": []})
    result = import_csv(write(tmp_path / "w.csv", "email\nw@example.fr\n"), topic="news")
    assert result.unchanged == 1
    link = db.session.scalar(sa.select(ContactTopic).where(ContactTopic.contact_id == contact.id))
    assert link.topic_id == topic.id and link.subscribed is False


def test_unknown_topic_fails_before_reading(app, ctx, tmp_path):
    path = write(tmp_path / "t.csv", "email\na@example.fr\n")
    res = app.test_cli_runner().invoke(args=["contacts", "import", path, "--topic", "nope"])
    assert res.exit_code == 1 and "topic: no topic 'nope'" in res.output
    assert contacts() == {}


def test_column_mapping_semicolons_and_declared_attributes(app, ctx, tmp_path):
    services.define_attribute("score", "number")
    services.define_attribute("vip", "boolean")
    services.define_attribute("since", "date")
    path = write(tmp_path / "m.csv", "E-mail;Prénom;attributes.score;attributes.vip;attributes.since\n"
                 "a@example.fr;Amélie;12,5;oui;2020-01-02\n"
                 "b@example.fr;Bruno;lots;non;\n")
    res = cli(app, "import", path, "--map", "E-mail=email", "--map", "Prénom=first_name")
    assert "2 rows: 1 created, 0 updated, 0 unchanged, 1 rejected" in res.output, res.output
    a = contacts()["a@example.fr"]
    assert (a.first_name, a.attributes) == ("Amélie", {"score": 12.5, "vip": True, "since": "2020-01-02"})
    (row,) = rejects(tmp_path / "m.rejects.csv", ";")
    assert row["E-mail"] == "b@example.fr" and row["reason"] == "attributes.score: must be a number"


def test_bad_files_are_clear_errors(app, ctx, tmp_path):
    runner = app.test_cli_runner()
    cases = {
        "unknown.csv": ("email,shoe_size\na@example.fr,42\n", "unknown column(s) 'shoe_size'"),
        "nokey.csv": ("first_name\nAnne\n", "needs an email or a phone column"),
        "empty.csv": ("", "empty"),
        "attr.csv": ("email,attributes.nope\na@example.fr,1\n", "unknown column(s) 'attributes.nope'"),
    }
    for name, (text, message) in cases.items():
        res = runner.invoke(args=["contacts", "import", write(tmp_path / name, text)])
        assert res.exit_code == 1 and message in res.output, (name, res.output)
    (tmp_path / "latin1.csv").write_bytes("email,city\na@example.fr,Orléans\n".encode("latin-1"))
    res = runner.invoke(args=["contacts", "import", str(tmp_path / "latin1.csv")])
    assert res.exit_code == 1 and "file: not UTF-8" in res.output
    res = runner.invoke(args=["contacts", "import", write(tmp_path / "m.csv", "email\n"), "--map", "oops"])
    assert res.exit_code == 1 and "map:" in res.output
    assert contacts() == {}


def test_validation_pool_gives_the_same_result(app, ctx, tmp_path):
    lines = ["email,phone,city"] + [f"p{i}@example.fr,06{i:08d},Lyon" for i in range(300)] + ["bad,,Lyon"]
    path = write(tmp_path / "pool.csv", "\n".join(lines) + "\n")
    result = import_csv(path, workers=2, chunk_rows=50)
    assert (result.rows, result.created, result.rejected) == (301, 300, 1)
    assert import_csv(path, workers=0, chunk_rows=70).unchanged == 300


def test_bad_bytes_stop_the_pool_after_the_same_rows_as_without_it(app, ctx, tmp_path):
    """The pool validates chunks ahead; an undecodable line is raised after every whole chunk before
    it is written, as without a pool ("rows before it were imported"), not with those chunks lost."""
    import pytest

    from contacts.errors import ValidationError

    lines = b"email,city\n" + b"".join(f"bad{i:05d}@example.fr,Lyon\n".encode() for i in range(4000))
    path = tmp_path / "latin.csv"
    path.write_bytes(lines + "late@example.fr,Orléans\n".encode("latin-1"))
    counts = []
    for workers in (1, 0):
        with pytest.raises(ValidationError) as err:
            import_csv(str(path), workers=workers, chunk_rows=100)
        assert "not UTF-8 text near line" in err.value.fields["file"]
        counts.append(db.session.scalar(sa.select(sa.func.count()).select_from(Contact)))
        db.session.execute(sa.delete(Contact))
        db.session.commit()
    assert counts[0] == counts[1] and counts[0] >= 2000 and counts[0] % 100 == 0, counts


def test_chunk_conflicting_with_a_concurrent_insert_is_retried(app, ctx, tmp_path, monkeypatch):
    from contacts import importer

    path = write(tmp_path / "r.csv", "email,city\nrace@example.fr,Lyon\nother@example.fr,Nice\n")
    real = importer._ChunkWriter._lookup
    calls = []

    def someone_inserts():
        if not calls:
            calls.append(1)
            with db.engine.begin() as conn:  # another writer, its own transaction
                conn.execute(sa.insert(Contact.__table__).values(email="race@example.fr", tags=[], attributes={},
                                                                 created_at=utcnow(), updated_at=utcnow()))

    def lookup_then_someone_inserts(self, emails, phones):
        found = real(self, emails, phones)
        someone_inserts()
        return found

    monkeypatch.setattr(importer._ChunkWriter, "_lookup", lookup_then_someone_inserts)
    timers = []
    if db.engine.dialect.name == "postgresql":
        # The set-based merge sorts and inserts in one statement: the other writer inserts before it
        # and commits while it runs, so the statement's insert waits for it, then conflicts.
        import threading

        real_merge = importer.merge_staged

        class Cursor:
            def __init__(self, cur):
                self.cur = cur

            def __getattr__(self, name):
                return getattr(self.cur, name)

            def execute(self, query, *args):
                if "ins_contacts AS" in query and not calls:
                    calls.append(1)
                    other = db.engine.connect()
                    other.execute(sa.insert(Contact.__table__).values(email="race@example.fr", tags=[], attributes={},
                                                                      created_at=utcnow(), updated_at=utcnow()))

                    def commit():
                        other.commit()
                        other.close()

                    timers.append(threading.Timer(0.3, commit))
                    timers[-1].start()
                return self.cur.execute(query, *args)

        monkeypatch.setattr(importer, "merge_staged", lambda cur, *a, **k: real_merge(Cursor(cur), *a, **k))
    result = import_csv(path)
    for timer in timers:
        timer.join()
    assert calls
    assert (result.created, result.updated, result.rejected) == (1, 1, 0)
    assert contacts()["race@example.fr"].city == "Lyon"


# The cases the set-based merge (PostgreSQL) sorts out of its fast paths; on SQLite the same file gives
# the same contacts through the row-by-row merge.

def test_rows_of_one_chunk_colliding_with_each_other_apply_in_file_order(app, ctx, tmp_path):
    path = write(tmp_path / "k.csv", "email,phone,first_name,city\n"
                 "kim@example.fr,,Kim,Lyon\n"
                 ",06 33 33 33 33,,Nice\n"                      # a new contact, by phone
                 "kim@example.fr,0633333333,,\n"                 # Kim takes that phone: two contacts, rejected
                 "lou@example.fr,,Lou,\n"
                 "LOU@example.fr,,,Brest\n"                      # the same person again: fills the city
                 "max@example.fr,06 44 44 44 44,Max,\n"
                 "max2@example.fr,0644444444,,\n")               # found by phone: Max's email changes
    result = import_csv(path, chunk_rows=50)
    assert (result.rows, result.created, result.updated, result.unchanged, result.rejected) == (7, 4, 2, 0, 1)
    assert rejects(result.rejects_path)[0]["reason"] == \
        "phone: already the phone of another row of this file; merge them with flask contacts dedupe"
    found = contacts()
    assert set(found) == {"kim@example.fr", "+33633333333", "lou@example.fr", "max2@example.fr"}
    assert (found["kim@example.fr"].phone, found["kim@example.fr"].city) == (None, "Lyon")
    assert (found["lou@example.fr"].first_name, found["lou@example.fr"].city) == ("Lou", "Brest")
    assert (found["max2@example.fr"].first_name, found["max2@example.fr"].phone) == ("Max", "+33644444444")
    again = import_csv(path, chunk_rows=50)
    assert (again.created, again.rejected) == (0, 1)
    assert contacts().keys() == found.keys()


def test_row_updating_a_contact_found_by_phone_and_unchanged_rows_beside_it(app, ctx, tmp_path):
    known, _ = services.upsert_contact({"phone": "0655555555", "first_name": "Ana", "tags": ["vip"]})
    same, _ = services.upsert_contact({"email": "same@example.fr", "city": "Lyon", "tags": ["a", "b"]})
    path = write(tmp_path / "p.csv", "email,phone,city,tags\n"
                 "ana@example.fr,06.55.55.55.55,Paris,\n"
                 "same@example.fr,,Lyon,b|a\n"
                 "new@example.fr,,Caen,\n")
    result = import_csv(path)
    assert (result.created, result.updated, result.unchanged, result.rejected) == (1, 1, 1, 0)
    db.session.expire_all()
    ana = db.session.get(Contact, known.id)
    assert (ana.email, ana.phone, ana.first_name, ana.city, ana.tags) == \
        ("ana@example.fr", "+33655555555", "Ana", "Paris", ["vip"])
    assert db.session.get(Contact, same.id).updated_at == same.updated_at
    assert (import_csv(path).unchanged, len(contacts())) == (3, 3)


def test_erased_address_is_blocked_beside_new_rows_and_special_characters_survive(app, ctx, tmp_path):
    services.define_attribute("note", "string")
    gone, _ = services.upsert_contact({"email": "gone@example.fr"})
    services.erase_contact(gone.id)
    path = write(tmp_path / "e.csv", "email,attributes.note,email_status,consent_source,consent_at,consent_text\n"
                 'a@example.fr,"back\\slash\ttab",confirmed,salon,2024-05-01T09:00:00Z,"two\nlines"\n'
                 "GONE@example.fr,,,,,\n"
                 "b@example.fr,,,,,\n")
    result = import_csv(path)
    assert (result.created, result.rejected) == (2, 1)
    assert rejects(result.rejects_path)[0]["reason"].startswith("email: erased")
    a = contacts()["a@example.fr"]
    assert (a.attributes, a.email_status) == ({"note": "back\\slash\ttab"}, "confirmed")
    (event,) = events()
    assert (event.contact_id, event.source, event.text, event.method) == (a.id, "salon", "two\nlines", "import")
    assert import_csv(path).unchanged == 2


def test_new_rows_get_their_topics_and_events_in_row_order(app, ctx, tmp_path):
    news = services.create_topic("news", "News")
    offers = services.create_topic("offers", "Offers")
    path = write(tmp_path / "o.csv", "email,sms_status,phone,topics,consent_source,consent_at\n"
                 "t1@example.fr,confirmed,0677777777,offers,stand,2024-02-02T10:00:00Z\n"
                 "t2@example.fr,,,,,\n")
    result = import_csv(path, topic="news")
    assert (result.created, result.rejected) == (2, 0)
    found = contacts()
    t1, t2 = found["t1@example.fr"], found["t2@example.fr"]
    # The row's own topics first, then --topic's.
    assert [(e.contact_id, e.channel, e.topic_id, e.source) for e in events()] == [
        (t1.id, "sms", None, "stand"), (t1.id, "email", offers.id, "stand"), (t1.id, "email", news.id, "stand"),
        (t2.id, "email", news.id, "import")]
    assert t1.sms_status == "confirmed" and t1.sms_status_at is not None and t1.email_status_at is None
    links = set(db.session.execute(sa.select(ContactTopic.contact_id, ContactTopic.topic_id)).all())
    assert links == {(t1.id, news.id), (t1.id, offers.id), (t2.id, news.id)}
    assert import_csv(path, topic="news").unchanged == 2 and len(events()) == 4


def test_an_address_erased_while_the_import_runs_is_blocked_in_later_chunks(app, ctx, tmp_path):
    late, _ = services.upsert_contact({"email": "late@example.fr"})
    path = write(tmp_path / "l.csv", "email,city\nfirst@example.fr,Lyon\nlate@example.fr,Nice\n")

    def erase_after_first_chunk(_position, result):
        if result.rows == 1:
            services.erase_contact(late.id)

    result = import_csv(path, chunk_rows=1, progress=erase_after_first_chunk)
    assert (result.created, result.updated, result.rejected) == (1, 0, 1)
    assert rejects(result.rejects_path)[0]["reason"].startswith("email: erased")


def test_a_writer_failure_stops_the_reader_thread_and_the_pool(app, ctx, tmp_path, monkeypatch):
    # With a validation pool the file is read in a thread ahead of the writer: when writing a chunk
    # fails, the import raises that error, the chunks before it stay written, and neither the
    # thread nor the pool's processes outlive the import.
    import multiprocessing
    import threading

    from contacts import importer

    path = write(tmp_path / "w.csv", "email,city\n" + "".join(f"w{i:04d}@example.fr,Lyon\n" for i in range(1000)))
    writer = importer._StagedWriter if db.engine.dialect.name == "postgresql" else importer._ChunkWriter
    real, calls = writer.write, []

    def fail_on_third(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(self, *args)

    monkeypatch.setattr(writer, "write", fail_on_third)
    with pytest.raises(RuntimeError, match="disk full"):
        import_csv(str(path), workers=1, chunk_rows=100)
    assert len(calls) == 3
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 200
    assert not [t for t in threading.enumerate() if t.name == "import-reader"]
    assert not multiprocessing.active_children()
