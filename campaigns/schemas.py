"""Marshmallow schemas of the campaigns API: they document it (OpenAPI) and check JSON types;
campaigns.services checks the rest (audience, templates, addresses)."""
from marshmallow import Schema, fields, validate

from contacts.schemas import PageQuerySchema, PageSchema

TEMPLATE_DOC = ("Jinja2 (sandboxed): {{ contact.first_name | default('client') }}, {% if ... %}, "
                "{{ contact.birth_date | date('long') }} in the contact's language; {{ unsubscribe_url }}")


class CampaignInSchema(Schema):
    name = fields.String(metadata={"description": "internal name"})
    channel = fields.String(validate=validate.OneOf(["email", "sms"]))
    segment_id = fields.Integer(allow_none=True, strict=True, metadata={"description": "audience: a segment ..."})
    topic = fields.String(allow_none=True, metadata={"description": "... and/or the subscribers of a topic (slug)"})
    exclude_segment_ids = fields.List(fields.Integer(strict=True), allow_none=True,
                                      metadata={"description": "members of these segments are left out"})
    sender = fields.String(allow_none=True, metadata={"description": "From of an email campaign; ENVOI_EMAIL_FROM "
                                                                      "when empty"})
    subject = fields.String(allow_none=True, metadata={"description": "email; " + TEMPLATE_DOC})
    html = fields.String(allow_none=True, metadata={"description": "email; CSS is inlined, a footer with the "
                                                                   "unsubscribe link is added"})
    text = fields.String(allow_none=True, metadata={"description": "email; generated from the HTML when empty"})
    body = fields.String(allow_none=True, metadata={"description": "SMS; the opt-out mention is appended"})


class SmsInfoSchema(Schema):
    encoding = fields.String(metadata={"description": "GSM-7 or UCS-2"})
    characters = fields.Integer()
    units = fields.Integer(metadata={"description": "septets (GSM-7) or UTF-16 units (UCS-2)"})
    segments = fields.Integer()


class CampaignSchema(CampaignInSchema):
    id = fields.Integer()
    status = fields.String(metadata={"description": "draft, scheduled, sending, paused, sent, cancelled"})
    status_reason = fields.String(allow_none=True)
    send_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    targeted = fields.Integer()
    author_id = fields.Integer(allow_none=True)
    created_at = fields.String()
    updated_at = fields.String()
    sms = fields.Nested(SmsInfoSchema, metadata={"description": "SMS campaigns: as a sample contact gets it"})


class CampaignPageSchema(PageSchema):
    items = fields.List(fields.Nested(CampaignSchema))


class CampaignQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(["draft", "scheduled", "sending", "paused", "sent", "cancelled"]))


class CampaignPreviewInSchema(Schema):
    contact_id = fields.Integer(allow_none=True, strict=True,
                                metadata={"description": "render as this contact; empty merge fields when absent"})


class CampaignPreviewSchema(Schema):
    subject = fields.String()
    html = fields.String(allow_none=True)
    text = fields.String()
    body = fields.String()
    sms = fields.Nested(SmsInfoSchema)


class CampaignTestInSchema(Schema):
    to = fields.List(fields.String(), required=True, metadata={"description": "addresses (email) or numbers (SMS)"})
    contact_id = fields.Integer(allow_none=True, strict=True, metadata={"description": "personalise as this contact"})


class CampaignTestResultSchema(Schema):
    to = fields.String()
    sent = fields.Boolean()
    provider_id = fields.String()
    error = fields.String()
    code = fields.Integer(allow_none=True)


class CampaignTestOutSchema(Schema):
    results = fields.List(fields.Nested(CampaignTestResultSchema))


class CampaignSendInSchema(Schema):
    at = fields.String(allow_none=True, metadata={"description": "ISO 8601 time; now when absent (UTC when no "
                                                                 "offset)"})


class CampaignStatsSchema(Schema):
    targeted = fields.Integer()
    sent = fields.Integer()
    failed = fields.Integer()
    bounced = fields.Integer()
    skipped = fields.Integer()
    delivered = fields.Integer()
    unsubscribed = fields.Integer(metadata={"description": "unsubscribes attributed to the campaign"})
    queued = fields.Integer()
    sending = fields.Integer()
    undelivered = fields.Integer()
    duplicates_possible = fields.Integer(metadata={"description": "sent again after a worker died mid-batch"})
    status = fields.String()
    status_reason = fields.String(allow_none=True)
