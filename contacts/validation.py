"""Validation and normalisation of contact input: one path for the API, imports and forms.

`clean_contact(raw, ...)` takes strings or JSON values and returns a dict of normalised
values, or raises ValidationError naming every bad field and its reason.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from zoneinfo import available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from contacts.models import ATTRIBUTE_TYPES, EMAIL_STATUSES, LIFECYCLES, PERSONAL_FIELDS, SMS_STATUSES
from envoi.errors import ValidationError

MAX_LEN = {"salutation": 20, "first_name": 100, "last_name": 100, "gender": 20, "address": 300,
           "postal_code": 20, "city": 100, "company_name": 200, "sector": 100, "source": 100}
GENDERS = {"f": "female", "female": "female", "femme": "female", "w": "female", "woman": "female",
           "m": "male", "male": "male", "homme": "male", "man": "male",
           "x": "other", "other": "other", "autre": "other", "nb": "other", "non-binary": "other"}
BOOL_TRUE = {"true", "1", "yes", "y", "oui", "o", "vrai"}
BOOL_FALSE = {"false", "0", "no", "n", "non", "faux"}
# What the API or an import may set; pending comes from opt-in, the rest from delivery results.
SETTABLE_EMAIL = {"confirmed", "unsubscribed", "bounced", "complained"}
SETTABLE_SMS = {"confirmed", "unsubscribed", "invalid"}

# Addresses this pattern accepts are accepted by email-validator with the same result once
# lower-cased (tests/contacts/test_validation.py checks it with hypothesis); everything else
# takes the full email-validator path. It saves ~40 µs a row on large imports.
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_FAST_EMAIL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+[a-z]{{2,24}}")
_SPECIAL_TLDS = {"arpa", "invalid", "local", "localhost", "onion", "test", "internal", "alt", "home", "lan", "corp", "intranet", "example", "private"}
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[A-Za-z]{2}|-[0-9]{3})?")


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def _fast_email_ok(value: str) -> bool:
    if len(value) > 254 or not _FAST_EMAIL.fullmatch(value):
        return False
    local, _, domain = value.rpartition("@")
    if len(local) > 64 or len(domain) > 253 or "--" in domain:
        return False
    return domain.rsplit(".", 1)[1] not in _SPECIAL_TLDS


def normalise_email(value, field: str = "email") -> str:
    if not isinstance(value, str):
        raise ValidationError("invalid email", {field: "must be a string"})
    candidate = value.strip().lower()
    if _fast_email_ok(candidate):
        return candidate
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as err:
        raise ValidationError("invalid email", {field: str(err)}) from None
    return result.normalized.lower()


_PHONE_SEPARATORS = str.maketrans("", "", " .-/()\u00a0\t")


@lru_cache(maxsize=64)
def _trunk_zero_country_code(region: str) -> int | None:
    """The country code of a region whose national prefix is a plain "0" (FR, BE, DE, GB ...)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if meta is None or meta.national_prefix != "0" or meta.national_prefix_for_parsing not in ("0", None) \
            or meta.national_prefix_transform_rule or meta.leading_digits:
        return None
    return meta.country_code


def _fast_phone(candidate: str, region: str) -> str | None:
    """E.164 for the common shapes (0X XX XX XX XX, +33 X XX ...) of the default region's numbers,
    without phonenumbers.parse (~50 µs); the validity check is the library's own. Anything else,
    or anything invalid, returns None and takes the full path. tests/contacts/test_validation.py
    checks with hypothesis that both paths agree."""
    cc = _trunk_zero_country_code(region)
    if cc is None:
        return None
    digits = candidate.translate(_PHONE_SEPARATORS)
    if digits.startswith("+"):
        head = f"+{cc}"
        if not digits.startswith(head):
            return None
        national = digits[len(head):]
    elif digits.startswith("0"):
        national = digits[1:]
    else:
        return None
    if not (national.isascii() and national.isdigit()) or not 4 <= len(national) <= 14 or national[0] == "0":
        return None
    valid = _valid_national(cc, national)
    if valid is None:  # a country code this shortcut does not cover: the library's own check
        valid = phonenumbers.is_valid_number(phonenumbers.PhoneNumber(country_code=cc, national_number=int(national)))
    return f"+{cc}{national}" if valid else None


# phonenumbers' validity check (is_valid_number) tries up to 11 number types one pattern at a time
# (~60 µs). The same decision with one pattern per length: the general pattern, then the
# alternation of every type's pattern that allows that length. Exact by construction (same
# patterns, same length filters, fullmatch of an alternation is "any alternative matches");
# tests/contacts/test_validation.py compares both on every region's numbers and random digits.
_NUMBER_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan",
                 "voicemail", "fixed_line")
_VALIDITY: dict = {}


def _desc_pattern(desc, length: int) -> str | None:
    if desc is None or not desc.national_number_pattern:
        return None
    if desc.possible_length and length not in desc.possible_length:
        return None
    return desc.national_number_pattern


def _validity_patterns(cc: int, length: int):
    """(general, any type) compiled patterns for national numbers of this length, or None when the
    country code is shared by several regions (the library then picks the region per number)."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(cc)
    if not regions or len(regions) != 1 or regions[0] == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
        return None
    meta = phonenumbers.PhoneMetadata.metadata_for_region(regions[0])
    if meta is None or phonenumbers.country_code_for_valid_region(regions[0]) != cc:
        return None
    general = _desc_pattern(meta.general_desc, length)
    descs = [getattr(meta, name) for name in _NUMBER_TYPES]
    if not meta.same_mobile_and_fixed_line_pattern:
        descs.append(meta.mobile)  # otherwise the library checks mobile only through fixed_line
    types = [p for p in (_desc_pattern(d, length) for d in descs) if p is not None]
    if any(re.search(r"\\[1-9]|\(\?[a-zA-Z]", p) for p in (general or "", *types)):
        return None  # back-references or inline flags would not survive being joined
    never = re.compile(r"(?!)")
    return (re.compile(general) if general else never,
            re.compile("|".join(f"(?:{p})" for p in types)) if types else never)


def _valid_national(cc: int, national: str) -> bool | None:
    """phonenumbers.is_valid_number for +cc national (digits, no leading 0), or None if not covered."""
    key = (cc, len(national))
    patterns = _VALIDITY.get(key, False)
    if patterns is False:
        patterns = _VALIDITY[key] = _validity_patterns(cc, len(national))
    if patterns is None:
        return None
    return patterns[0].fullmatch(national) is not None and patterns[1].fullmatch(national) is not None


def normalise_phone(value, region: str, field: str = "phone") -> str:
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise ValidationError("invalid phone", {field: "must be a string"})
    candidate = value.strip()
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    fast = _fast_phone(candidate, region)
    if fast is not None:
        return fast
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException as err:
        raise ValidationError("invalid phone", {field: f"not a phone number ({err._msg})"}) from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError("invalid phone", {field: f"not a valid number for its country (default region {region})"})
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_date(value, field: str) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValidationError("invalid date", {field: "expected an ISO date YYYY-MM-DD"})
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError("invalid date", {field: "expected an ISO date YYYY-MM-DD"}) from None


def parse_datetime(value, field: str) -> datetime:
    """ISO 8601; a time without zone is taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("invalid time", {field: "expected an ISO 8601 time"}) from None
    else:
        raise ValidationError("invalid time", {field: "expected an ISO 8601 time"})
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def parse_amount(value, field: str) -> Decimal:
    try:
        amount = Decimal(str(value).strip().replace(",", ".")) if value is not None else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or abs(amount) >= Decimal("1e10"):
        raise ValidationError("invalid amount", {field: "expected a decimal number"})
    return amount.quantize(Decimal("0.01"))


# Cleaning is a pure function of a cell for most fields, and a customer file repeats the same
# first names, cities, salutations, consent texts ... thousands of times: the results of those
# fields are remembered per value (bounded; a full memo starts again). Addresses, emails and
# phones are mostly unique and go through the functions every time.
MEMO_SIZE = 20_000
_MISS = object()
_COUNTRIES: dict = {}
_LANGUAGES: dict = {}
_DATES: dict = {}
_TAGS: dict = {}
_CONSENTS: dict = {}
_TEXT_MEMO: dict[str, dict] = {key: {} for key in ("salutation", "first_name", "last_name", "gender", "postal_code",
                                                   "city", "company_name", "sector", "source")}


def clear_memos() -> None:
    for memo in (_COUNTRIES, _LANGUAGES, _DATES, _TAGS, _CONSENTS, *_TEXT_MEMO.values()):
        memo.clear()


def _remember(memo: dict, key, value):
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value
    return value


def _remembered(memo: dict, value, clean, field: str, errors: dict):
    """clean(value) -> (cleaned, error or None), remembered in `memo` for string values that pass."""
    if value.__class__ is str:
        cleaned = memo.get(value, _MISS)
        if cleaned is not _MISS:
            return cleaned
    cleaned, error = clean(value)
    if error is not None:
        errors[field] = error
    elif value.__class__ is str:
        _remember(memo, value, cleaned)
    return cleaned


def _clean_country(value):
    country = str(value).strip().upper()
    return country, None if country in phonenumbers.SUPPORTED_REGIONS else "an ISO 3166 alpha-2 code such as FR"


def _clean_language(value):
    language = str(value).strip().replace("_", "-")
    language = language[:2].lower() + language[2:]
    return language, None if _LANGUAGE.fullmatch(language) else "a language tag such as fr or fr-FR"


def _text_memo(value, field: str, errors: dict) -> str | None:
    """_text, remembered for the fields that repeat (only values that pass are remembered)."""
    memo = _TEXT_MEMO.get(field)
    if memo is None or value.__class__ is not str:
        return _text(value, field, errors)
    cleaned = memo.get(value, _MISS)
    if cleaned is _MISS:
        cleaned = _text(value, field, errors)
        if field not in errors:
            _remember(memo, value, cleaned)
    return cleaned


def _text(value, field: str, errors: dict) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        errors[field] = "must be a string"
        return None
    value = " ".join(value.split())
    if len(value) > MAX_LEN[field]:
        errors[field] = f"at most {MAX_LEN[field]} characters"
        return None
    return value or None


def clean_tags(value, errors: dict, field: str = "tags") -> list[str]:
    if isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, list):
        errors[field] = "must be a list of strings"
        return []
    tags: list[str] = []
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            errors[f"{field}[{i}]"] = "must be a string"
            continue
        tag = " ".join(tag.split()).lower()
        if not tag:
            continue
        if len(tag) > 50 or "|" in tag:
            errors[f"{field}[{i}]"] = "at most 50 characters, no '|'"
            continue
        if tag not in tags:
            tags.append(tag)
    return sorted(tags)


def coerce_attribute(kind: str, value, field: str):
    """A declared attribute's value in its JSON form (dates as ISO strings)."""
    if value is None or value == "":
        return None
    if kind == "string":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValidationError("invalid attribute", {field: "must be a string"})
        value = str(value).strip()
        if len(value) > 1000:
            raise ValidationError("invalid attribute", {field: "at most 1000 characters"})
        return value
    if kind == "number":
        if isinstance(value, bool):
            raise ValidationError("invalid attribute", {field: "must be a number"})
        if isinstance(value, (int, float)):
            number = value
        else:
            try:
                number = float(str(value).strip().replace(",", "."))
            except ValueError:
                raise ValidationError("invalid attribute", {field: "must be a number"}) from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValidationError("invalid attribute", {field: "must be a finite number"})
        return int(number) if float(number).is_integer() else float(number)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in BOOL_TRUE:
            return True
        if text in BOOL_FALSE:
            return False
        raise ValidationError("invalid attribute", {field: "must be true or false"})
    if kind == "date":
        return parse_date(value, field).isoformat()
    raise AssertionError(kind)


def clean_consent(value, field: str = "consent") -> dict:
    if not isinstance(value, dict):
        raise ValidationError("invalid consent", {field: 'expected {"source": ..., "at": ISO time, "text": ...}'})
    errors = {}
    source = value.get("source")
    if not isinstance(source, str) or not source.strip():
        errors[f"{field}.source"] = "required: where the consent was given (form URL, shop, event ...)"
    at = None
    try:
        at = parse_datetime(value.get("at"), f"{field}.at")
        if at > datetime.now(timezone.utc).replace(microsecond=0) + _SKEW:
            errors[f"{field}.at"] = "is in the future"
    except ValidationError as err:
        errors.update(err.fields)
    text = value.get("text")
    if text is not None and not isinstance(text, str):
        errors[f"{field}.text"] = "must be a string"
    unknown = set(value) - {"source", "at", "text"}
    for key in sorted(unknown):
        errors[f"{field}.{key}"] = "unknown field"
    if errors:
        raise ValidationError("invalid consent", errors)
    return {"source": source.strip()[:300], "at": at, "text": (text or None)}


_SKEW = timedelta(minutes=5)


def clean_contact(raw: dict, *, attribute_types: dict[str, str], region: str, partial: bool = False) -> dict:
    """Normalise a contact payload. Keys absent from `raw` are absent from the result.

    Raises ValidationError with every bad field at once.
    """
    errors: dict[str, str] = {}
    out: dict = {}
    for value in raw.values():
        if isinstance(value, str) and "\x00" in value:
            # NUL cannot be stored in PostgreSQL text (CSV imports reach here too).
            raise ValidationError("invalid contact", {key: "contains a NUL character" for key, value in raw.items()
                                                      if isinstance(value, str) and "\x00" in value})
    if not ALLOWED_KEYS.issuperset(raw):
        for key in raw:
            if key not in ALLOWED_KEYS:
                errors[key] = "unknown field"
    if "email" in raw:
        if raw["email"] in (None, ""):
            out["email"] = None
        else:
            try:
                out["email"] = normalise_email(raw["email"])
            except ValidationError as err:
                errors.update(err.fields)
    if "phone" in raw:
        if raw["phone"] in (None, ""):
            out["phone"] = None
        else:
            try:
                out["phone"] = normalise_phone(raw["phone"], region)
            except ValidationError as err:
                errors.update(err.fields)
    for key in MAX_LEN:
        if key in raw:
            out[key] = _text_memo(raw[key], key, errors)
    if out.get("gender"):
        gender = GENDERS.get(out["gender"].lower())
        if gender is None:
            errors["gender"] = "one of female, male, other"
        out["gender"] = gender
    if out.get("postal_code"):
        out["postal_code"] = out["postal_code"].upper()
    if "birth_date" in raw and raw["birth_date"] not in (None, ""):
        try:
            text = raw["birth_date"]
            born = _DATES.get(text) if text.__class__ is str else None
            if born is None:
                born = parse_date(text, "birth_date")
                if text.__class__ is str:
                    _remember(_DATES, text, born)
            if born > date.today() or born.year < 1900:
                errors["birth_date"] = "must be between 1900-01-01 and today"
            out["birth_date"] = born
        except ValidationError as err:
            errors.update(err.fields)
    elif "birth_date" in raw:
        out["birth_date"] = None
    if "country" in raw and raw["country"] not in (None, ""):
        out["country"] = _remembered(_COUNTRIES, raw["country"], _clean_country, "country", errors)
    elif "country" in raw:
        out["country"] = None
    if "language" in raw and raw["language"] not in (None, ""):
        out["language"] = _remembered(_LANGUAGES, raw["language"], _clean_language, "language", errors)
    elif "language" in raw:
        out["language"] = None
    if "timezone" in raw and raw["timezone"] not in (None, ""):
        if raw["timezone"] not in _timezones():
            errors["timezone"] = "an IANA time zone such as Europe/Paris"
        out["timezone"] = raw["timezone"]
    elif "timezone" in raw:
        out["timezone"] = None
    if "headcount" in raw and raw["headcount"] not in (None, ""):
        try:
            headcount = int(str(raw["headcount"]).strip())
            if headcount < 0:
                raise ValueError
            out["headcount"] = headcount
        except ValueError:
            errors["headcount"] = "a whole number, 0 or more"
    elif "headcount" in raw:
        out["headcount"] = None
    if "lifecycle" in raw:
        lifecycle = raw["lifecycle"] or "prospect"
        if lifecycle not in LIFECYCLES:
            errors["lifecycle"] = f"one of {', '.join(LIFECYCLES)}"
        out["lifecycle"] = lifecycle
    for key in ("tags", "add_tags", "remove_tags"):
        if key in raw:
            value = raw[key]
            tags = _TAGS.get(value) if value.__class__ is str else None
            if tags is None:
                tags = clean_tags(value if value is not None else [], errors, key)
                if value.__class__ is str and not any(k.startswith(key) for k in errors):
                    _remember(_TAGS, value, tuple(tags))
            out[key] = list(tags)
    if "attributes" in raw:
        attrs = raw["attributes"] if raw["attributes"] is not None else {}
        if not isinstance(attrs, dict):
            errors["attributes"] = "must be an object"
        else:
            clean = {}
            for key, value in attrs.items():
                kind = attribute_types.get(key)
                if kind is None:
                    errors[f"attributes.{key}"] = "not a declared attribute (declare it with POST /api/v1/attributes)"
                    continue
                try:
                    clean[key] = coerce_attribute(kind, value, f"attributes.{key}")
                except ValidationError as err:
                    errors.update(err.fields)
            out["attributes"] = clean
    if "topics" in raw:
        topics = raw["topics"] if raw["topics"] is not None else []
        if isinstance(topics, str):
            topics = [t for t in topics.split("|") if t.strip()]
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            errors["topics"] = "must be a list of topic slugs"
        else:
            out["topics"] = sorted({t.strip() for t in topics if t.strip()})
    for key, allowed, every in (("email_status", SETTABLE_EMAIL, EMAIL_STATUSES),
                                ("sms_status", SETTABLE_SMS, SMS_STATUSES)):
        if key in raw and raw[key] not in (None, ""):
            if raw[key] not in every:
                errors[key] = f"one of {', '.join(every)}"
            elif raw[key] not in allowed:
                errors[key] = f"{raw[key]!r} is set by Envoi itself; you may set {', '.join(sorted(allowed))}"
            out[key] = raw[key]
    if "consent" in raw and raw["consent"] is not None:
        given = raw["consent"]
        # An import's rows share a few consents: remembered by their three strings.
        key = (given.get("source"), given.get("at"), given.get("text")) \
            if given.__class__ is dict and len(given) <= 3 and all(v.__class__ is str for v in given.values()) \
            and given.keys() <= {"source", "at", "text"} else None
        consent = _CONSENTS.get(key) if key is not None else None
        if consent is None:
            try:
                consent = clean_consent(given)
                if key is not None:
                    _remember(_CONSENTS, key, consent)
            except ValidationError as err:
                errors.update(err.fields)
        if consent is not None:
            out["consent"] = dict(consent)
    if "confirmed" in (out.get("email_status"), out.get("sms_status")) and "consent" not in out \
            and "consent" not in errors and not any(k.startswith("consent.") for k in errors):
        field = "email_status" if out.get("email_status") == "confirmed" else "sms_status"
        errors.setdefault(field, 'setting confirmed needs a consent object {"source", "at", "text"}')
    if not partial and not out.get("email") and not out.get("phone") and "email" not in errors and "phone" not in errors:
        errors["email"] = "an email or a phone is required"
    if errors:
        raise ValidationError("invalid contact", errors)
    return out


ALLOWED_KEYS = frozenset(("email", "phone", *PERSONAL_FIELDS, "tags", "add_tags", "remove_tags",
                          "attributes", "topics", "email_status", "sms_status", "consent"))
assert set(ATTRIBUTE_TYPES) == {"string", "number", "boolean", "date"}
