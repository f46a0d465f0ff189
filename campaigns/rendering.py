"""Campaign content: Jinja2 in a sandbox, compiled once per campaign and process, rendered per contact.

What a marketer writes (subject, html, text, SMS body) is untrusted Jinja2 run in an immutable
sandbox: merge fields with fallbacks (`{{ contact.first_name | default("client") }}`), conditions,
dates and amounts in the contact's language (`{{ contact.birth_date | date("long") }}`). Undefined
names render empty; reading a private attribute is refused when the campaign is saved.

The email's footer (unsubscribe link, preference centre, postal address; templates/email/) is
appended to the template before it is compiled, and the CSS is inlined then, before the merge,
so a message costs one template render and one MIME build. Text is generated from the HTML once,
at compile time, when the campaign gives none.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import threading
import traceback
from collections import OrderedDict
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from functools import lru_cache
from pathlib import Path

import css_inline
from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from flask import current_app
from jinja2 import ChainableUndefined, TemplateSyntaxError, nodes, pass_context
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    ImmutableSandboxedEnvironment,
)
from markupsafe import Markup

from envoi.errors import ValidationError

EMAIL_TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"
DEFAULT_LANGUAGE = "fr"
FIELDS = ("subject", "html", "text", "body")
# Longest string or list an expression may build (`'a' * 10**9` would eat the worker's memory).
MAX_SIZE = 1_000_000

_UNSAFE = (UNSAFE_FUNCTION_ATTRIBUTES | UNSAFE_METHOD_ATTRIBUTES | UNSAFE_GENERATOR_ATTRIBUTES
           | UNSAFE_COROUTINE_ATTRIBUTES | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES | {"mro", "format", "format_map"})


class TemplateError(ValidationError):
    """Content that does not compile or is not allowed: 422, `fields` maps each field to "line N: why"."""

    def __init__(self, fields: dict[str, str], message: str = "invalid template"):
        super().__init__(message, fields)


class RenderError(Exception):
    """A template failed for one contact at send time (bad data for this contact, a template bug).
    `str(err)` is fit to record on the delivery: "html line 3: unsupported operand ..."."""

    def __init__(self, field: str, line: int | None, reason: str):
        self.field, self.line, self.reason = field, line, reason
        where = f"{field} line {line}" if line else field
        super().__init__(f"{where}: {reason}")


# ---------------------------------------------------------------- sandboxed environments

class _Sandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that also caps the size of what `*` and `**` build."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int) and abs(right) > 100:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_SIZE:
                    raise SecurityError("result too large")
        return super().call_binop(context, operator, left, right)


def _missing(value) -> bool:
    return value is None or isinstance(value, ChainableUndefined)


def _default(value, default_value="", boolean=False):
    """Like Jinja's `default`, but a null field (None) also takes the fallback."""
    if _missing(value) or (boolean and not value):
        return default_value
    return value


def _finalize(value):
    return "" if value is None else value


@lru_cache(maxsize=256)
def _locale(language: str | None) -> Locale:
    if language:
        try:
            return Locale.parse(str(language).replace("-", "_"))
        except (ValueError, TypeError, UnknownLocaleError):
            pass
    return Locale.parse(DEFAULT_LANGUAGE)


def _as_date(value):
    if isinstance(value, (date, datetime)):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return datetime.fromisoformat(text) if ("T" in text or " " in text) else date.fromisoformat(text)
        except ValueError:
            return None
    return None


@pass_context
def _date(ctx, value, format="long"):
    """`{{ contact.birth_date | date }}` -> "12 mars 1990" (fr) / "March 12, 1990" (en)."""
    value = _as_date(value)
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(ctx.get("tzinfo") or timezone.utc)
        value = value.date()
    return babel_dates.format_date(value, format=format, locale=ctx.get("locale") or _locale(None))


@pass_context
def _datetime(ctx, value, format="medium"):
    """A date and time in the contact's language and timezone."""
    value = _as_date(value)
    if value is None:
        return ""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return babel_dates.format_datetime(value, format=format, tzinfo=ctx.get("tzinfo"),
                                       locale=ctx.get("locale") or _locale(None))


@pass_context
def _money(ctx, value, currency="EUR"):
    """`{{ contact.purchase_total | money("EUR") }}` -> "1 234,50 €" (fr)."""
    if _missing(value) or value == "":
        return ""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ""
    return babel_numbers.format_currency(amount, str(currency), locale=ctx.get("locale") or _locale(None))


@pass_context
def _number(ctx, value):
    if _missing(value) or value == "":
        return ""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ""
    return babel_numbers.format_decimal(amount, locale=ctx.get("locale") or _locale(None))


def _make_env(autoescape: bool) -> _Sandbox:
    env = _Sandbox(autoescape=autoescape, undefined=ChainableUndefined, finalize=_finalize,
                   keep_trailing_newline=True, auto_reload=False, cache_size=0)
    env.filters.update(default=_default, d=_default, date=_date, datetime=_datetime, money=_money, number=_number)
    return env


HTML_ENV = _make_env(True)
TEXT_ENV = _make_env(False)
# The sandbox's globals (range, dict, lipsum...: the same in both environments).
_GLOBALS = dict(HTML_ENV.globals)


def _with_globals(context: dict) -> dict:
    """What Template.render gives a template: the globals, then the context over them."""
    return {**_GLOBALS, **context}


def _env(field: str, channel: str) -> _Sandbox:
    return HTML_ENV if field == "html" else TEXT_ENV


def _compile(env: _Sandbox, source: str, field: str):
    """Compiled template whose traceback frames carry `field` as file name (for error lines)."""
    code = env.compile(source, name=field, filename=field)
    return env.template_class.from_code(env, code, env.make_globals(None), None)


# ---------------------------------------------------------------- validation (at save time)

def _forbidden(tree) -> tuple[int, str] | None:
    """First access to a private or unsafe attribute in the tree: (line, reason)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args \
                and isinstance(node.args[0], nodes.Const) and isinstance(node.args[0].value, str):
            name = node.args[0].value
        if name is not None and (name.startswith("_") or name in _UNSAFE):
            return node.lineno, f"access to attribute {name!r} is not allowed"
    return None


def _error_line(err: BaseException, field: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == field:
            line = frame.lineno
    return getattr(err, "lineno", None) or line


def _sample_contact() -> dict:
    return {
        "id": 0, "email": "marie.dupont@example.com", "phone": "+33612345678", "salutation": "Mme",
        "first_name": "Marie", "last_name": "Dupont", "birth_date": "1990-03-12", "gender": "f",
        "address": "1 rue de la Paix", "postal_code": "75002", "city": "Paris", "country": "FR",
        "language": "fr", "timezone": "Europe/Paris", "company_name": "Exemple SA", "sector": "retail",
        "headcount": 12, "lifecycle": "customer", "source": "form", "tags": ["vip"], "attributes": {},
        "topics": ["news"], "email_status": "confirmed", "sms_status": "confirmed", "purchase_count": 3,
        "purchase_total": "123.45", "first_purchase_at": "2024-01-05T10:00:00+00:00",
        "last_purchase_at": "2025-02-01T10:00:00+00:00", "last_activity_at": "2025-02-01T10:00:00+00:00",
        "created_at": "2023-06-01T09:00:00+00:00", "updated_at": "2025-02-01T10:00:00+00:00",
    }


def check_template(field: str, source: str, channel: str = "email") -> str | None:
    """None when `source` is fine, else "line N: why" (syntax, forbidden attribute, a sandbox violation
    or a plain bug met while rendering a sample contact)."""
    env = _env(field, channel)
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as err:
        return f"line {err.lineno}: {err.message}"
    found = _forbidden(tree)
    if found:
        return f"line {found[0]}: {found[1]}"
    try:
        template = _compile(env, source, field)
    except TemplateSyntaxError as err:
        return f"line {err.lineno}: {err.message}"
    try:
        template.render(_context_from_dict(_sample_contact(), campaign_id=0, contact_id=0, config=None))
    except UndefinedError:
        pass  # depends on the contact's data (an attribute the sample lacks): judged per contact
    except Exception as err:  # noqa: BLE001 - any other failure is a template bug worth refusing now
        line = _error_line(err, field)
        return f"line {line}: {err}" if line else str(err)
    return None


def validate_content(channel: str, subject: str | None, html: str | None, text: str | None,
                     body: str | None) -> None:
    """Raise TemplateError naming each field that does not compile or is not allowed, with its line."""
    errors = {}
    values = {"subject": subject, "html": html, "text": text} if channel == "email" else {"body": body}
    for field, source in values.items():
        if source is None or source == "":
            continue
        if not isinstance(source, str):
            errors[field] = "must be a string"
            continue
        problem = check_template(field, source, channel)
        if problem:
            errors[field] = problem
    if errors:
        raise TemplateError(errors)


# ---------------------------------------------------------------- compiled campaigns

_inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PLACEHOLDER = re.compile(r"<!--envoi-j(\d+)-->")


@lru_cache(maxsize=8)
def _email_template(name: str) -> str:
    return (EMAIL_TEMPLATES / name).read_text(encoding="utf-8")


def _with_layout_and_footer(html: str) -> str:
    """The campaign's HTML inside the layout (when it is a fragment) with the footer before </body>."""
    if not re.search(r"<html[\s>]", html, re.I):
        html = _email_template("layout.html").replace("<!--envoi:content-->", html)
    footer = _email_template("footer.html")
    at = html.lower().rfind("</body>")
    return html[:at] + footer + html[at:] if at >= 0 else html + footer


def inline_template_css(source: str) -> str | None:
    """Inline the CSS of a Jinja HTML template before any merge; None when that cannot be done
    safely (a Jinja tag inside a tag name, a <title>, a <style>...): then each message is inlined."""
    chunks: list[str] = []

    def hide(match):
        chunks.append(match.group(0))
        return f"<!--envoi-j{len(chunks) - 1}-->"

    hidden = _JINJA.sub(hide, source)
    if "{{" in hidden or "{%" in hidden:
        return None
    try:
        inlined = _inliner.inline(hidden)
    except Exception:  # noqa: BLE001 - css_inline.InlineError and friends: fall back to per message
        return None
    if [int(n) for n in _PLACEHOLDER.findall(inlined)] != list(range(len(chunks))):
        return None
    return _PLACEHOLDER.sub(lambda m: chunks[int(m.group(1))], inlined)


_TABLE_TAGS = re.compile(r"<(/?)(?:table|thead|tbody|tfoot|tr|td|th)(?=[\s>/])", re.I)
_BLANKS = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}")


def html_to_text(html: str) -> str:
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    # Layout tables read badly as text, and inscriptis lays cells out side by side, which would
    # tear a Jinja loop over rows apart: read them as blocks.
    html = _TABLE_TAGS.sub(lambda m: f"<{m.group(1)}div", html)
    text = get_text(html, ParserConfig(display_links=True))
    text = "\n".join(line.strip() for line in text.splitlines())
    return _BLANKS.sub("\n\n", text).strip() + "\n"


# Names of a template's context that cost something to make (a signed token, the clock read twice):
# left out when no template of the campaign reads them (`CompiledCampaign.names`).
OPTIONAL_NAMES = frozenset({"preferences_url", "today", "now"})


def template_names(env: _Sandbox, source: str) -> set[str]:
    """The context names a template reads (jinja2.meta: every undeclared variable)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(env.parse(source)))


def _context_from_dict(contact: dict, *, campaign_id: int | None, contact_id: int | None, config: dict | None,
                       to: str | None = None, names: frozenset | set | None = None) -> dict:
    """The template context of one contact; `names`: the optional names wanted (None: all of them)."""
    from campaigns.sms import zone

    want = OPTIONAL_NAMES if names is None else OPTIONAL_NAMES & names
    language = contact.get("language")
    locale = _locale(language)
    if config is not None and contact_id is not None:
        from optin.tokens import preferences_url, unsubscribe_url

        urls = {"unsubscribe_url": unsubscribe_url(contact_id, "email", campaign_id)}
        if "preferences_url" in want:
            urls["preferences_url"] = preferences_url(contact_id)
    else:
        urls = {"unsubscribe_url": "https://example.invalid/unsubscribe", "preferences_url":
                "https://example.invalid/preferences"}
    tzinfo = zone(contact.get("timezone"))
    context = {"contact": contact, "locale": locale, "lang": locale.language, "tzinfo": tzinfo,
               "postal_address": (config or {}).get("POSTAL_ADDRESS") or "", **urls}
    if "now" in want or "today" in want:
        now = datetime.now(tzinfo)
        context["today"], context["now"] = now.date(), now
    return context


def contact_context(contact, *, campaign_id: int | None, need_topics: bool, config: dict | None,
                    names: frozenset | set | None = None) -> dict:
    from contacts.services import contact_to_dict

    data = contact_to_dict(contact, topics=None if need_topics and contact.id else [])
    return _context_from_dict(data, campaign_id=campaign_id, contact_id=contact.id if contact.id is not None else 0,
                              config=config, names=names)


_CONFIG_KEYS = ("EMAIL_FROM", "POSTAL_ADDRESS", "BASE_URL", "UNSUBSCRIBE_MAILTO", "DKIM_KEY_PATH", "DKIM_SELECTOR",
                "DKIM_DOMAIN", "SMS_OPTOUT_TEXT", "SECRET_KEY")


class CompiledCampaign:
    """A campaign's templates, compiled once; `email()` / `sms()` render one contact's message."""

    def __init__(self, campaign, config: dict):
        self.campaign_id = campaign.id
        self.channel = campaign.channel
        self.track = bool(getattr(campaign, "track", True))
        self.sender = campaign.sender or config["EMAIL_FROM"]
        self.sender_domain = _domain(self.sender)  # of every Message-ID: parsed once, not per message
        self.config = config
        self.templates: dict = {}
        self.sources: dict = {}
        self.field_names: dict = {}  # field -> the context names its template reads
        self.names: frozenset = frozenset()  # ... all fields together (which optional names to make)
        self.inline_each = False
        self.qp = (QPLines(), QPLines())  # (text, html) encoded lines, shared by the messages
        sources = {f: getattr(campaign, f) or "" for f in FIELDS}
        self.user_sources = sources
        self.need_topics = any("topics" in s for s in sources.values())
        if self.channel == "email":
            html = sources["html"]
            self.has_html = bool(html.strip())
            if self.has_html:
                full = _with_layout_and_footer(html)
                inlined = inline_template_css(full)
                if inlined is not None and self._try("html", inlined):
                    pass
                else:
                    self.inline_each = True
                    self._add("html", full)
            text = sources["text"]
            if not text.strip() and self.has_html:
                generated = html_to_text(html)
                if not self._try("text", generated + _email_template("footer.txt")):
                    self.text_from_html = True  # the generated text carries the HTML footer
                    self._add("text", "")
                else:
                    self.text_from_html = False
            else:
                self.text_from_html = False
                self._add("text", text + _email_template("footer.txt"))
            self._add("subject", sources["subject"])
            self.dkim = _dkim_key(config)
        else:
            self._add("body", sources["body"])
            self.optout = (config.get("SMS_OPTOUT_TEXT") or "").strip()

    def _add(self, field: str, source: str) -> None:
        env = _env(field, self.channel)
        try:
            self.templates[field] = _compile(env, source, field)
            names = template_names(env, source)
        except TemplateSyntaxError as err:
            raise TemplateError({field: f"line {err.lineno}: {err.message}"}) from None
        self.sources[field] = source
        self.field_names[field] = names
        self.names = frozenset().union(*self.field_names.values())

    def _try(self, field: str, source: str) -> bool:
        try:
            self._add(field, source)
        except TemplateError:
            return False
        return True

    def _render(self, field: str, parent: dict) -> str:
        """One field; `parent` is `_with_globals(context)`, made once and shared by a message's fields
        (Template.render copies the context and the globals into a new dict twice per field)."""
        template = self.templates[field]
        try:
            try:
                return template.environment.concat(template.root_render_func(template.new_context(parent, shared=True)))
            except Exception:  # noqa: BLE001 - what Template.render does: error lines of the template
                template.environment.handle_exception()
        except Exception as err:  # noqa: BLE001 - one contact's failure, reported, never a crash
            raise RenderError(field, self._user_line(field, parent, err),
                              str(err) or type(err).__name__) from None

    def _user_line(self, field: str, context: dict, err: Exception) -> int | None:
        """The line in what the marketer wrote: the compiled HTML has the layout, footer and inlined CSS."""
        source = self.user_sources.get(field) or ""
        if field not in ("html", "text") or not source or self.sources.get(field) == source:
            return _error_line(err, field)
        try:
            _compile(_env(field, self.channel), source, field).render(context)
        except Exception as again:  # noqa: BLE001
            return _error_line(again, field)
        return None

    def context(self, contact) -> dict:
        return contact_context(contact, campaign_id=self.campaign_id, need_topics=self.need_topics,
                               config=self.config, names=self.names)

    # ------------------------------------------------------------ email

    def render_email(self, contact, context: dict | None = None) -> dict:
        """{"subject", "html" (or None), "text"}: the merged parts, footer included (preview)."""
        ctx = _with_globals(context or self.context(contact))
        subject = " ".join(self._render("subject", ctx).split())
        html = None
        if self.has_html:
            html = self._render("html", ctx)
            if self.inline_each:
                try:
                    html = _inliner.inline(html)
                except Exception as err:  # noqa: BLE001
                    raise RenderError("html", None, f"CSS inlining failed: {err}") from None
        text = self._render("text", ctx)
        if self.text_from_html:
            text = html_to_text(html) + text
        text = _BLANKS.sub("\n\n", text)
        return {"subject": subject, "html": html, "text": text}

    def email(self, contact, *, delivery_id: int | None, to: str | None = None,
              subject_prefix: str = "") -> EmailMessage:
        """The message for one contact, ready for campaigns.channels.send_email.

        `to` overrides the recipient (test sends); `delivery_id` goes into the Message-ID and
        X-Envoi-Delivery so bounces and replies find their delivery.
        """
        ctx = self.context(contact)
        parts = self.render_email(contact, ctx)
        if delivery_id is not None and self.campaign_id:  # test sends are not tracked
            from campaigns.tracking import track_email, tracked

            if tracked(self.track, contact):
                parts = track_email(parts, self.campaign_id, contact.id)
        recipient = to or contact.email
        if not recipient:
            raise RenderError("email", None, "the contact has no email address")
        domain = self.sender_domain
        token = os.urandom(6).hex()
        if delivery_id is not None:
            message_id = f"<d{int(delivery_id)}.c{self.campaign_id}.{token}@{domain}>"
        else:
            message_id = f"<t.c{self.campaign_id}.{token}@{domain}>"
        unsubscribe = f"<{ctx['unsubscribe_url']}>"
        if self.config.get("UNSUBSCRIBE_MAILTO"):
            unsubscribe += f", <mailto:{self.config['UNSUBSCRIBE_MAILTO']}?subject=unsubscribe>"
        headers = {"List-Unsubscribe": unsubscribe, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        if delivery_id is not None:
            headers["X-Envoi-Delivery"] = str(int(delivery_id))
        msg = build_message(recipient, subject_prefix + parts["subject"], parts["text"], parts["html"],
                            sender=self.sender, headers=headers, message_id=message_id, qp=self.qp)
        if self.dkim is not None:
            sign_dkim(msg, *self.dkim)
        return msg

    # ------------------------------------------------------------ sms

    def render_sms(self, contact, context: dict | None = None) -> str:
        body = self._render("body", _with_globals(context or self.context(contact))).strip()
        if self.optout and self.optout.lower() not in body.lower():
            body = f"{body}\n{self.optout}" if body else self.optout
        return body

    def sms(self, contact, *, track: bool = False) -> str:
        """The SMS body for one contact, the opt-out mention appended (marketing SMS); `track`
        (a real send) shortens its links to BASE_URL/s/<code> when tracking is on."""
        body = self.render_sms(contact)
        if track and self.campaign_id:
            from campaigns.tracking import shorten_sms, tracked

            if tracked(self.track, contact):
                body = shorten_sms(body, self.campaign_id, contact.id)
        return body


# ---------------------------------------------------------------- MIME, fast

# campaigns.mime.compose builds the same message through email.headerregistry, which parses every
# header it is given: ~1.5 ms a message, more than the render. Here the headers we write ourselves
# are stored pre-encoded (RFC 2047 where needed) and the bodies pre-encoded quoted-printable, so a
# message costs tens of microseconds; it is still an EmailMessage with policy SMTP (CRLF on the wire).
# List-Unsubscribe URLs longer than 78 characters must not be turned into encoded words: lines may
# run to 998 (RFC 5322 2.1.1).
WIRE_POLICY = SMTP.clone(max_line_length=998)


_ADDR = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+"
_PLAIN_ADDRESS = re.compile(rf"[A-Za-z0-9 _'-]{{0,64}} ?<{_ADDR}>|{_ADDR}")


def _encode_header(value: str) -> str:
    value = " ".join(value.split())  # no CR/LF from a template can inject a header
    if value.isascii():
        return value
    words, chunk = [], b""
    for ch in value:
        b = ch.encode("utf-8")
        if len(chunk) + len(b) > 45:
            words.append(chunk)
            chunk = b""
        chunk += b
    if chunk:
        words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words)


class QPLines:
    """Quoted-printable encoding of a body, line by line, keeping the encoded lines met before.

    The lines of a campaign's message are mostly the same for every contact (only those with a
    merge field or a tracked link differ), and encoding 20 kB costs more than rendering it. A
    line's encoding depends on the line alone (soft breaks restart at each line break; a line is
    encoded with its line break so trailing blanks come out as b2a_qp writes them inside a text):
    the result is byte for byte `binascii.b2a_qp(body, istext=True)` (tested). Distinct lines are
    kept until they add up to `budget` characters (a campaign's fixed lines come with its first
    message; then the store stops growing: its memory is bounded whatever the campaign's size).
    """

    def __init__(self, budget: int = 256 * 1024):
        self.lines: dict[str, bytes] = {}
        self.budget = budget

    def encode(self, content: str) -> bytes:
        """`content` with LF line ends and a final LF, encoded, LF line ends."""
        lines = content.split("\n")
        lines.pop()  # after the final LF
        encoded = list(map(self.lines.get, lines))
        if None in encoded:
            for i, line in enumerate(lines):
                if encoded[i] is None:
                    encoded[i] = self._miss(line)
        return b"".join(encoded)

    def _miss(self, line: str) -> bytes:
        encoded = binascii.b2a_qp(line.encode("utf-8") + b"\n", quotetabs=False, istext=True)
        cost = len(line) + len(encoded) + 100
        if cost <= self.budget:
            self.budget -= cost
            self.lines[line] = encoded
        return encoded


def _text_part(content: str, subtype: str, qp: QPLines | None = None) -> EmailMessage:
    part = EmailMessage(policy=WIRE_POLICY)
    part._headers = [("Content-Type", f'text/{subtype}; charset="utf-8"'),
                     ("Content-Transfer-Encoding", "quoted-printable")]
    if not content.endswith("\n"):
        content += "\n"
    if "\r" in content:  # (the two replaces cost ~10 us on a 10 kB body even when there is no CR)
        content = content.replace("\r\n", "\n").replace("\r", "\n")
    if qp is not None:
        encoded = qp.encode(content)
    else:
        encoded = binascii.b2a_qp(content.encode("utf-8"), quotetabs=False, istext=True)
    payload = encoded.decode("ascii")
    part.set_payload(payload)
    # The wire form (CRLF), made once here: wire_bytes uses it while the payload is this one.
    part._envoi_wire = (payload, encoded.replace(b"\n", b"\r\n"))
    return part


def build_message(to: str, subject: str, text: str, html: str | None = None, *, sender: str,
                  headers: dict | None = None, message_id: str | None = None,
                  qp: tuple[QPLines, QPLines] | None = None) -> EmailMessage:
    """What campaigns.mime.compose makes (multipart/alternative text + HTML, quoted-printable, UTF-8),
    built without reparsing each header. `qp`: the (text, html) line caches of a campaign."""
    msg = EmailMessage(policy=WIRE_POLICY)
    raw = [("Subject", _encode_header(subject)), ("Date", format_datetime(datetime.now(timezone.utc))),
           ("Message-ID", message_id or make_msgid(domain=_domain(sender))), ("MIME-Version", "1.0")]
    raw += [(name, _encode_header(str(value))) for name, value in (headers or {}).items()]
    # Plain ASCII addresses are stored as they are; anything else goes through the policy
    # (display names to encode, internationalised addresses).
    for name, value in (("From", sender), ("To", to)):
        if _PLAIN_ADDRESS.fullmatch(value):
            msg._headers.append((name, value))
        else:
            msg[name] = value
    msg._headers.extend(raw)
    if html is None:
        body = _text_part(text, "plain", qp and qp[0])
        msg._headers.extend(body._headers)
        msg.set_payload(body.get_payload())
        msg._envoi_wire = body._envoi_wire
        return msg
    boundary = f"=_envoi_{os.urandom(12).hex()}"
    msg._headers.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
    msg.set_payload([_text_part(text, "plain", qp and qp[0]), _text_part(html, "html", qp and qp[1])])
    msg._envoi_boundary = boundary
    return msg


def header_value(msg: EmailMessage, name: str) -> str | None:
    """A header's value as stored, without `msg[name]`'s parse by the policy (a structured
    header object per read: more than the SMTP transaction's CPU for a few reads)."""
    wanted = name.lower()
    for key, value in msg._headers:
        if key.lower() == wanted:
            return str(value)
    return None


def _fold(headers, out: list) -> None:
    for name, value in headers:
        # What the policy does with a str value that fits the line length (all of ours but the
        # From/To header objects of display names to encode), without its per-header work.
        if type(value) is str and len(name) + len(value) < 990 and value.isascii() and value.isprintable():
            out.append(f"{name}: {value}\r\n".encode("ascii"))
        else:
            out.append(WIRE_POLICY.fold_binary(name, value))
    out.append(b"\r\n")


def _body(msg: EmailMessage) -> bytes:
    payload = msg._payload  # get_payload() parses Content-Transfer-Encoding on every call
    cached = getattr(msg, "_envoi_wire", None)
    if cached is not None and cached[0] is payload:
        return cached[1]
    # Quoted-printable bodies from _text_part: ASCII, bare LF line ends only.
    return payload.encode("ascii").replace(b"\n", b"\r\n")


def wire_bytes(msg: EmailMessage) -> bytes:
    """`msg.as_bytes()` for a message from build_message, without the email generator's per-line
    writes (~2 ms for a 20 kB message, more than rendering it). Byte for byte the same (tested)."""
    if msg.policy is not WIRE_POLICY or not hasattr(msg, "_envoi_boundary") and msg.is_multipart():
        return msg.as_bytes()
    out: list[bytes] = []
    _fold(msg._headers, out)
    if not msg.is_multipart():
        out.append(_body(msg))
        return b"".join(out)
    boundary = msg._envoi_boundary.encode("ascii")
    for n, part in enumerate(msg._payload):
        out.append((b"--" if n == 0 else b"\r\n--") + boundary + b"\r\n")
        _fold(part._headers, out)
        out.append(_body(part))
    out.append(b"\r\n--" + boundary + b"--\r\n")
    return b"".join(out)


def _domain(address: str) -> str:
    from email.utils import parseaddr

    return parseaddr(address)[1].rpartition("@")[2] or "localhost"


# ---------------------------------------------------------------- DKIM

@lru_cache(maxsize=4)
def _read_key(path: str) -> bytes:
    return Path(path).read_bytes()


def _dkim_key(config: dict):
    path, selector, domain = config.get("DKIM_KEY_PATH"), config.get("DKIM_SELECTOR"), config.get("DKIM_DOMAIN")
    if not (path and selector and domain):
        return None
    return selector, domain, _read_key(path)


SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                  b"list-unsubscribe", b"list-unsubscribe-post"]


def sign_dkim(msg: EmailMessage, selector: str, domain: str, key: bytes) -> None:
    """Add a DKIM-Signature (relaxed/relaxed, rsa-sha256) kept byte for byte as dkimpy folded it."""
    import dkim

    signature = dkim.sign(wire_bytes(msg), selector.encode(), domain.encode(), key,
                          include_headers=SIGNED_HEADERS, canonicalize=(b"relaxed", b"relaxed"), linesep=b"\r\n")
    lines = signature.decode("ascii").rstrip("\r\n").split("\r\n")
    name, value = msg.policy.header_source_parse([line + "\r\n" for line in lines])
    # Through msg[...] the policy would refold the value and change what was signed.
    msg._headers.insert(0, (name, value))


# ---------------------------------------------------------------- per-process cache

_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()
CACHE_SIZE = 32


def _key(campaign, config: dict) -> tuple:
    fields = (*FIELDS, "sender", "channel", "track")
    content = hashlib.blake2b(repr(tuple(getattr(campaign, f, None) for f in fields)).encode(),
                              digest_size=16).digest()
    return campaign.id, campaign.updated_at, content, tuple(config.get(k) for k in _CONFIG_KEYS)


def compiled(campaign) -> CompiledCampaign:
    """The campaign's compiled templates, cached per process by (id, updated_at) and content."""
    config = {k: current_app.config.get(k) for k in _CONFIG_KEYS}
    key = _key(campaign, config)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    result = CompiledCampaign(campaign, config)
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return result


__all__ = ["TemplateError", "RenderError", "validate_content", "compiled", "CompiledCampaign", "check_template",
           "html_to_text", "inline_template_css", "Markup"]
