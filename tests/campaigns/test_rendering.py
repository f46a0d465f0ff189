"""Campaign content: sandboxed Jinja, personalisation, email headers, footer, CSS, text, DKIM."""
import email
import subprocess
from datetime import date
from email import policy

import pytest

from campaigns.models import Campaign
from campaigns.rendering import RenderError, TemplateError, compiled, validate_content
from contacts.models import Contact
from envoi.types import utcnow
from tests.conftest import configured

_ids = iter(range(1000, 100000))


def campaign(**values) -> Campaign:
    data = {"id": next(_ids), "name": "c", "channel": "email", "subject": "Hello", "html": None, "text": None,
            "body": None, "sender": None, "updated_at": utcnow()}
    data.update(values)
    return Campaign(**data)


def contact(**values) -> Contact:
    data = {"id": 42, "email": "marie@example.org", "first_name": "Marie", "city": "Lyon", "language": "fr",
            "birth_date": date(1990, 3, 12), "tags": ["vip"], "attributes": {"points": 12}, "lifecycle": "customer",
            "email_status": "confirmed", "sms_status": "none", "purchase_count": 0, "purchase_total": 0}
    data.update(values)
    return Contact(**data)


HTML = """<html><head><style>p { color: #ff0000 } .big { font-size: 20px }</style></head><body>
<h1>Bonjour {{ contact.first_name | default("client") }}</h1>
{% if contact.city %}<p class="big">Vu à {{ contact.city }}</p>{% else %}<p>Partout</p>{% endif %}
<table>{% for tag in contact.tags %}<tr><td>tag {{ tag }}</td></tr>{% endfor %}</table>
<a href="https://shop.example/?p={{ contact.attributes.points }}">La boutique</a>
</body></html>"""


def test_merge_fields_fallbacks_and_conditions(ctx):
    c = compiled(campaign(subject="Offre pour {{ contact.first_name | default('client') }}", html=HTML))
    parts = c.render_email(contact())
    assert parts["subject"] == "Offre pour Marie"
    assert "<h1>Bonjour Marie</h1>" in parts["html"] and "Vu à Lyon" in parts["html"]
    assert "tag vip" in parts["html"] and "?p=12" in parts["html"]
    anonymous = c.render_email(contact(first_name=None, city=None, tags=[], attributes={}))
    assert anonymous["subject"] == "Offre pour client"
    assert "Bonjour client" in anonymous["html"] and "Partout" in anonymous["html"]
    assert "?p=\"" in anonymous["html"]  # undefined renders empty, never "None"


def test_merge_fields_are_escaped_in_html_not_in_text(ctx):
    c = compiled(campaign(html="<p>{{ contact.first_name }}</p>", text="Hi {{ contact.first_name }}"))
    parts = c.render_email(contact(first_name="<b>Tom & Jerry</b>"))
    assert "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;" in parts["html"]
    assert parts["text"].startswith("Hi <b>Tom & Jerry</b>")


@pytest.mark.parametrize("language, expected", [("fr", "12 mars 1990"), ("en", "March 12, 1990"),
                                                 ("en-GB", "12 March 1990"), (None, "12 mars 1990")])
def test_dates_in_the_contacts_language(ctx, language, expected):
    c = compiled(campaign(html=None, text="Né le {{ contact.birth_date | date }}."))
    assert c.render_email(contact(language=language))["text"].startswith(f"Né le {expected}.")


def test_money_in_the_contacts_language(ctx):
    c = compiled(campaign(text="{{ contact.attributes.spent | money('EUR') }}"))
    assert c.render_email(contact(attributes={"spent": 1234.5}))["text"].startswith("1\u202f234,50\xa0€")
    assert c.render_email(contact(language="en", attributes={"spent": 1234.5}))["text"].startswith("€1,234.50")


@pytest.mark.parametrize("source, line", [
    ("<p>ok</p>\n{{ contact.__class__ }}", 2),
    ("{{ ''.__class__.__mro__ }}", 1),
    ("a\nb\n{{ contact|attr('__class__') }}", 3),
    ("x\n{% if contact.city %}\nno end", 2),  # where the unclosed block opened
    ("{{ contact.first_name | nosuchfilter }}", 1),
    ("{{ 'a' * 100000000 }}", 1),
])
def test_unsafe_or_broken_templates_are_refused_with_the_line(ctx, source, line):
    with pytest.raises(TemplateError) as err:
        validate_content("email", "subject", source, None, None)
    assert err.value.status == 422
    assert err.value.fields["html"].startswith(f"line {line}: ")


def test_a_runtime_error_for_one_contact_is_a_clear_render_error(ctx):
    source = "<p>hi</p>\n<p>{{ contact.attributes.points + 1 }}</p>"
    validate_content("email", "s", source, None, None)  # depends on the data: accepted when saved
    c = compiled(campaign(html=source))
    assert "13" in c.render_email(contact())["html"]
    with pytest.raises(RenderError) as err:
        c.email(contact(attributes={}), delivery_id=1)
    assert str(err.value).startswith("html line 2: ")


def test_headers_footer_and_crlf(app, ctx):
    with configured(app, UNSUBSCRIBE_MAILTO="unsub@example.org", POSTAL_ADDRESS="1 rue de la Paix, 75002 Paris",
                    BASE_URL="https://envoi.example"):
        c = compiled(campaign(id=77, sender="Shop <news@shop.example>", subject="Été {{ contact.first_name }}",
                              html=HTML))
        msg = c.email(contact(), delivery_id=5)
        other = c.email(contact(), delivery_id=6)
    raw = msg.as_bytes()
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF everywhere, no bare LF
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Été Marie"
    assert parsed["From"] == "Shop <news@shop.example>" and parsed["To"] == "marie@example.org"
    unsub = parsed["List-Unsubscribe"]
    assert unsub.startswith("<https://envoi.example/unsubscribe/") and "?c=77>" in unsub
    assert unsub.endswith(", <mailto:unsub@example.org?subject=unsubscribe>")
    assert b"=?" not in raw.split(b"List-Unsubscribe: ")[1].split(b"\r\n")[0]  # not an encoded word
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["X-Envoi-Delivery"] == "5"
    assert parsed["Message-ID"].startswith("<d5.c77.") and parsed["Message-ID"].endswith("@shop.example>")
    assert parsed["Message-ID"] != other["Message-ID"]
    assert parsed.get_content_type() == "multipart/alternative"
    html = parsed.get_body(("html",)).get_content()
    text = parsed.get_body(("plain",)).get_content()
    url = unsub[1:].split(">")[0]
    for part in (html, text):
        assert url in part and "https://envoi.example/preferences/" in part
        assert "1 rue de la Paix, 75002 Paris" in part
    assert "Se désabonner" in html  # the footer speaks the contact's language
    assert "Unsubscribe" in compiled(campaign(html=HTML)).render_email(contact(language="en"))["html"]


def test_css_is_inlined_once_and_text_is_generated_from_html(ctx):
    c = compiled(campaign(html=HTML))
    assert not c.inline_each  # the template was inlined before the merge
    assert "<style" not in c.sources["html"]
    parts = c.render_email(contact(tags=["a", "b"]))
    assert '<p class="big" style="color: #ff0000;font-size: 20px;">Vu à Lyon</p>' in parts["html"]
    assert "tag a" in parts["html"] and "tag b" in parts["html"]
    text = parts["text"]
    assert "Bonjour Marie" in text and "Vu à Lyon" in text and "tag a" in text and "tag b" in text
    assert "[La boutique](https://shop.example/?p=12)" in text
    assert "<" not in text.split("--")[0]


def test_a_fragment_gets_the_layout_and_a_tricky_template_is_inlined_per_message(ctx):
    fragment = compiled(campaign(html="<p>Hi {{ contact.first_name }}</p>"))
    html = fragment.render_email(contact())["html"]
    assert html.lower().startswith("<!doctype html>") and '<html lang="fr">' in html and "<p>Hi Marie</p>" in html
    tricky = compiled(campaign(html="<html><head><title>{{ contact.first_name }}</title><style>b{color:red}</style>"
                                    "</head><body><b>x</b></body></html>"))
    assert tricky.inline_each
    html = tricky.render_email(contact())["html"]
    assert "<title>Marie</title>" in html and '<b style="color: red;">x</b>' in html


def test_header_injection_is_impossible(ctx):
    c = compiled(campaign(subject="Hi {{ contact.first_name }}", text="t"))
    msg = c.email(contact(first_name="x\r\nBcc: victim@example.org"), delivery_id=1)
    parsed = email.message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert parsed["Bcc"] is None and parsed["Subject"] == "Hi x Bcc: victim@example.org"


def _dkim_keys(tmp_path):
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "1024"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                            capture_output=True).stdout
    import base64

    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_dkim_signature_verifies_after_smtp(app, ctx, smtp_server, tmp_path):
    import dkim

    from campaigns.channels import send_email

    key, record = _dkim_keys(tmp_path)
    with configured(app, DKIM_KEY_PATH=str(key), DKIM_SELECTOR="envoi", DKIM_DOMAIN="shop.example"):
        c = compiled(campaign(sender="news@shop.example", subject="Été {{ contact.first_name }}", html=HTML))
        msg = c.email(contact(), delivery_id=9)
    assert str(msg["DKIM-Signature"]).count("d=shop.example") == 1

    def dnsfunc(name, timeout=5):
        return record if name == b"envoi._domainkey.shop.example." else None

    assert dkim.verify(msg.as_bytes(), dnsfunc=dnsfunc)
    send_email(msg)
    received = smtp_server.wait_for(1)[0]["raw"]
    assert dkim.verify(received, dnsfunc=dnsfunc)
    tampered = received.replace(b"Bonjour Marie", b"Bonjour Mallory")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_compiled_is_cached_until_the_campaign_changes(ctx):
    c = campaign(html="<p>a</p>")
    first = compiled(c)
    assert compiled(c) is first
    c.html, c.updated_at = "<p>b</p>", utcnow()
    assert compiled(c) is not first


def test_wire_bytes_equal_the_generators(app, ctx, tmp_path):
    from campaigns.rendering import wire_bytes

    key, _ = _dkim_keys(tmp_path)
    variants = [dict(html=HTML), dict(text="Only text {{ contact.first_name }}\r\nline\n"),
                dict(html=HTML, sender="Élise Shop <news@shop.example>")]
    for config in ({}, {"DKIM_KEY_PATH": str(key), "DKIM_SELECTOR": "s", "DKIM_DOMAIN": "shop.example"}):
        with configured(app, **config):
            for values in variants:
                msg = compiled(campaign(**values)).email(contact(email="zoë@exämple.org"
                                                                 if "text" in values else "m@example.org"),
                                                         delivery_id=3)
                assert wire_bytes(msg) == msg.as_bytes()


def test_quoted_printable_line_store_gives_what_b2a_qp_gives():
    import binascii
    import random

    from campaigns.rendering import QPLines

    pieces = [" ", "\t", ".", "=", "a", "é", "€", "\n", "\n", "From ", "-", "\u00a0", "😀", "x" * 10, " " * 3,
              "\n.\n", "y" * 90]
    rnd = random.Random(4)
    store = QPLines(budget=4096)  # small: lines kept, then lines encoded each time
    for _ in range(3000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 60))) + "\n"
        expected = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True)
        assert store.encode(text) == expected
        assert store.encode(text) == expected  # from the store, the second time
    assert 0 < len(store.lines) and store.budget >= 0


def test_a_campaign_message_is_the_same_from_its_line_store(app, ctx):
    from campaigns.rendering import wire_bytes

    c = compiled(campaign(html=HTML))
    c.email(contact(), delivery_id=3)
    again = c.email(contact(), delivery_id=4)  # the fixed lines now from the store
    assert c.qp[0].lines and c.qp[1].lines
    assert wire_bytes(again) == again.as_bytes()


GLOBALS_HTML = """<html><body>{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}
<p>{{ ns.n }} {{ contact.first_name | default("client") }} {{ today.year }}</p>{% set hello = "Salut" %}
<p>{{ hello }} {{ lang }} {{ contact.birth_date | date }}</p></body></html>"""


def test_fields_render_as_template_render_does_from_the_names_they_read(ctx):
    """A message's fields share one context (the globals under it) and the context holds only the
    optional names the campaign's templates read: the same text as Template.render of the full context."""
    from campaigns.rendering import _with_globals, contact_context

    plain = compiled(campaign(html=HTML, subject="Bonjour {{ contact.first_name }}"))
    dated = compiled(campaign(html=GLOBALS_HTML, subject="Le {{ now.day }} {{ range(2) | list }}"))
    assert not {"today", "now"} & plain.names and {"today", "now"} <= dated.names
    assert "now" not in plain.context(contact()) and "now" in dated.context(contact())
    people = [contact(), contact(id=43, first_name=None, city=None, language="en", tags=[], attributes={}),
              contact(id=44, first_name="Zoé", birth_date=None, attributes={"points": 3})]
    for c in (plain, dated):
        for person in people:
            full = contact_context(person, campaign_id=c.campaign_id, need_topics=False, config=c.config)
            shared = _with_globals(c.context(person))
            for field in ("subject", "html", "text"):
                assert c._render(field, shared) == c.templates[field].render(full), (field, person.id)
    assert "Salut fr 12 mars 1990" in dated.render_email(contact())["html"]
