import pytest
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from contacts.validation import _fast_email_ok, clean_contact, normalise_email, normalise_phone
from envoi.errors import ValidationError


def clean(raw, **kw):
    return clean_contact(raw, attribute_types=kw.pop("types", {"score": "number", "vip": "boolean",
                                                               "since": "date", "note": "string"}),
                         region="FR", **kw)


local = st.from_regex(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[a-z0-9_+-]{1,10}){0,2}", fullmatch=True)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
tld = st.from_regex(r"[a-z]{2,8}", fullmatch=True)


@settings(max_examples=400, deadline=None)
@given(local=local, labels=st.lists(label, min_size=1, max_size=3), tld=tld)
def test_fast_email_path_agrees_with_email_validator(local, labels, tld):
    address = f"{local}@{'.'.join(labels)}.{tld}"
    if not _fast_email_ok(address):
        return
    # Whatever the fast path accepts, the library accepts with the same normalised form.
    result = validate_email(address, check_deliverability=False)
    assert result.normalized.lower() == address


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_fast_email_path_never_accepts_what_the_library_rejects(text):
    candidate = text.strip().lower()
    if _fast_email_ok(candidate):
        validate_email(candidate, check_deliverability=False)  # must not raise


def test_email_is_normalised_to_lower_case():
    assert normalise_email("  Jean.Dupont@Example.COM ") == "jean.dupont@example.com"
    assert normalise_email("élodie@exemple.fr") == "élodie@exemple.fr"


@pytest.mark.parametrize("bad", ["nope", "a@b", "a@@b.fr", "a b@c.fr", "x@localhost", "x@site.test", ""])
def test_bad_emails_are_refused_with_the_field(bad):
    with pytest.raises(ValidationError) as err:
        normalise_email(bad) if bad else clean({"email": bad})
    assert "email" in err.value.fields


def test_phone_is_stored_in_e164():
    assert normalise_phone("06 12 34 56 78", "FR") == "+33612345678"
    assert normalise_phone("0033 6 12 34 56 78", "FR") == "+33612345678"
    assert normalise_phone("+44 20 7946 0958", "FR") == "+442079460958"


@pytest.mark.parametrize("bad", ["12", "+33 1", "hello", "06 12 34"])
def test_bad_phones_name_the_field(bad):
    with pytest.raises(ValidationError) as err:
        normalise_phone(bad, "FR")
    assert "phone" in err.value.fields


def test_email_or_phone_required():
    with pytest.raises(ValidationError) as err:
        clean({"first_name": "Ana"})
    assert err.value.fields == {"email": "an email or a phone is required"}


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(ValidationError) as err:
        clean({"email": "ok@example.org", "birth_date": "2999-01-01", "country": "XX", "timezone": "Mars/Base",
               "headcount": "-3", "lifecycle": "vip", "gender": "?", "language": "french!", "nickname": "x"})
    assert set(err.value.fields) == {"birth_date", "country", "timezone", "headcount", "lifecycle", "gender",
                                     "language", "nickname"}


def test_attributes_must_be_declared_and_typed():
    out = clean({"email": "a@example.org", "attributes": {"score": "12,5", "vip": "oui", "since": "2024-02-01"}})
    assert out["attributes"] == {"score": 12.5, "vip": True, "since": "2024-02-01"}
    with pytest.raises(ValidationError) as err:
        clean({"email": "a@example.org", "attributes": {"score": "many", "shoe_size": 42}})
    assert set(err.value.fields) == {"attributes.score", "attributes.shoe_size"}


def test_confirmed_needs_a_consent():
    with pytest.raises(ValidationError) as err:
        clean({"email": "a@example.org", "email_status": "confirmed"})
    assert "email_status" in err.value.fields
    with pytest.raises(ValidationError) as err:
        clean({"email": "a@example.org", "email_status": "confirmed", "consent": {"at": "yesterday"}})
    assert {"consent.source", "consent.at"} <= set(err.value.fields)
    out = clean({"email": "a@example.org", "email_status": "confirmed",
                 "consent": {"source": "shop", "at": "2024-05-01T10:00:00Z", "text": "Oui"}})
    assert out["consent"]["at"].isoformat() == "2024-05-01T10:00:00+00:00"


def test_system_statuses_cannot_be_set():
    with pytest.raises(ValidationError) as err:
        clean({"email": "a@example.org", "email_status": "pending"})
    assert "set by Envoi" in err.value.fields["email_status"]


def test_tags_are_trimmed_lowered_and_deduplicated():
    assert clean({"email": "a@example.org", "tags": [" VIP ", "vip", "Salon  2024"]})["tags"] == ["salon 2024", "vip"]


def test_email_validator_rejects_what_we_reject():
    # The library is the reference for anything outside the fast path.
    with pytest.raises(EmailNotValidError):
        validate_email("x@localhost", check_deliverability=False)


def test_nul_in_a_field_is_refused_before_reaching_the_database():
    with pytest.raises(ValidationError) as err:
        clean({"email": "a@example.org", "city": "Ly\x00on"})
    assert err.value.fields == {"city": "contains a NUL character"}


def _slow_phone(text, region):
    import phonenumbers

    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@settings(max_examples=1500, deadline=None)
@given(region=st.sampled_from(["FR", "BE", "CH", "DE", "GB", "NL", "ES", "US"]),
       prefix=st.sampled_from(["0", "+33", "+32", "+41", "+49", "+44", "+31", "+330", "00", ""]),
       body=st.from_regex(r"[0-9]{1,12}", fullmatch=True),
       seps=st.sampled_from(["", " ", ".", "-"]))
def test_fast_phone_path_agrees_with_phonenumbers(region, prefix, body, seps):
    from contacts.validation import _fast_phone

    text = prefix + seps.join(body[i:i + 2] for i in range(0, len(body), 2))
    fast = _fast_phone(text, region)
    if fast is not None:
        # Whatever the fast path answers, the full library answers the same.
        assert fast == _slow_phone(text, region)


def test_fast_phone_path_takes_the_usual_french_shapes():
    from contacts.validation import _fast_phone

    assert _fast_phone("06 12 34 56 78", "FR") == "+33612345678"
    assert _fast_phone("+33 6.12.34.56.78", "FR") == "+33612345678"
    assert _fast_phone("+33 (0)6 12 34 56 78", "FR") is None  # full path
    assert _fast_phone("06 12 34", "FR") is None


def _library_valid(cc, national):
    return phonenumbers.is_valid_number(phonenumbers.PhoneNumber(country_code=cc, national_number=int(national)))


def test_validity_shortcut_agrees_with_phonenumbers_on_every_regions_numbers():
    import random

    from contacts.validation import _valid_national

    rnd = random.Random(2)
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        cc = phonenumbers.country_code_for_region(region)
        samples = set()
        for kind in range(12):  # every number type's example, and its neighbours
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            digits = str(example.national_number)
            samples.update({digits, digits[:-1], digits + "0", str(int(digits) + 1), "9" + digits[1:]})
        samples.update(str(rnd.randrange(1, 10)) + "".join(str(rnd.randrange(10)) for _ in range(rnd.randrange(3, 14)))
                       for _ in range(40))
        for national in samples:
            if not national or national[0] == "0":
                continue
            fast = _valid_national(cc, national)
            if fast is not None:
                assert fast == _library_valid(cc, national), (region, national)
                checked += 1
    assert checked > 5000


@settings(max_examples=1500, deadline=None)
@given(cc=st.sampled_from([33, 32, 41, 49, 34, 31, 39, 351, 48, 1, 44, 7, 262, 590]),
       national=st.from_regex(r"[1-9][0-9]{3,13}", fullmatch=True))
def test_validity_shortcut_agrees_with_phonenumbers_on_random_digits(cc, national):
    from contacts.validation import _valid_national

    fast = _valid_national(cc, national)
    if fast is not None:
        assert fast == _library_valid(cc, national)


# Remembered results (contacts.validation's memos): a value seen before must give exactly what it
# gives the first time, errors included, whatever was seen in between.
_POOLS = {
    "first_name": ["Léa", "  Léa  ", "Jean\tPierre", "x" * 101, ""],
    "city": ["Lyon", "lyon", " Saint-Étienne ", "y" * 101],
    "salutation": ["Mme", "M.", "z" * 21],
    "gender": ["F", "femme", "robot", " M "],
    "postal_code": ["69001", "sw1a 1aa", "9" * 21],
    "country": ["FR", "fr ", "XX", "gb"],
    "language": ["fr", "FR_be", "french", "en-GB"],
    "birth_date": ["1980-02-29", "1899-12-31", "2999-01-01", "31/12/1980", "1981-02-29"],
    "tags": ["vip|b2b", "VIP| b2b |vip", "a|" + "t" * 51, "|"],
    "consent": [{"source": "salon", "at": "2024-05-01T10:00:00Z", "text": "Oui"},
                {"source": "salon", "at": "2024-05-01T10:00:00Z"},
                {"source": " ", "at": "2024-05-01"},
                {"source": "web", "at": "2999-01-01T00:00:00Z", "text": "Oui"},
                {"source": "web", "at": "not a time", "text": "Oui"},
                {"source": "web", "at": "2024-05-01", "extra": "x"}],
}


def _outcome(raw):
    try:
        return "ok", clean_contact(raw, attribute_types={}, region="FR")
    except ValidationError as err:
        return "error", err.fields


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({}, optional={key: st.sampled_from(pool) for key, pool in _POOLS.items()}),
                min_size=1, max_size=30))
def test_remembered_results_are_the_results(raws):
    from contacts.validation import clear_memos

    clear_memos()
    for i, raw in enumerate(raws):
        raw = {"email": f"p{i}@example.fr", **raw}
        if "consent" in raw:
            raw = {**raw, "consent": dict(raw["consent"])}
        warm = _outcome(raw)
        clear_memos()
        assert warm == _outcome(raw), raw
        _outcome(raw)  # leave it remembered for the next rows


def test_remembered_results_are_copies_and_the_memos_are_bounded(monkeypatch):
    from contacts import validation

    validation.clear_memos()
    raw = {"email": "a@example.fr", "tags": "vip|b2b", "email_status": "confirmed",
           "consent": {"source": "salon", "at": "2024-05-01T10:00:00Z", "text": "Oui"}}
    first = clean_contact(raw, attribute_types={}, region="FR")
    first["tags"].append("changed")
    first["consent"]["source"] = "changed"
    again = clean_contact(raw, attribute_types={}, region="FR")
    assert again["tags"] == ["b2b", "vip"] and again["consent"]["source"] == "salon"
    monkeypatch.setattr(validation, "MEMO_SIZE", 50)
    for i in range(120):
        clean_contact({"email": "a@example.fr", "city": f"Ville {i}"}, attribute_types={}, region="FR")
    assert 0 < len(validation._TEXT_MEMO["city"]) <= 50
