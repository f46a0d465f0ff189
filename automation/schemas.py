"""Marshmallow schemas of the automation API: they document it (OpenAPI) and check JSON types;
automation.services checks the rest (trigger, rules, steps, templates) and names the field at fault."""
from marshmallow import Schema, fields, validate

from contacts.schemas import PageQuerySchema, PageSchema

STEPS_DOC = ('ordered steps: {"kind": "email", "subject", "html", "text"} | {"kind": "sms", "body"} | '
             '{"kind": "wait", "days", "hours", "minutes", "until": "HH:MM" (contact\'s timezone)} | '
             '{"kind": "branch", "rule": <segment rule>, "then": "next"|"exit"|"end"|N, "else": ...}; '
             'templates are Jinja2 (sandboxed) as in campaigns, with `trigger` (the purchase, the event)')
TRIGGER_DOC = ('{"type": "subscription", "channel", "topic"} | {"type": "anniversary", "field": "birth_date" | '
               '"attributes.<key>", "days_before"} | {"type": "purchase", "sku", "category"} | '
               '{"type": "winback", "days"} | {"type": "segment", "segment_id"} | {"type": "tag", "tag"} | '
               '{"type": "event", "name"}')


class AutomationInSchema(Schema):
    name = fields.String()
    trigger = fields.Dict(metadata={"description": TRIGGER_DOC})
    audience = fields.Dict(allow_none=True, metadata={"description": "a segment rule the contact must match"})
    topic = fields.String(allow_none=True, metadata={"description": "messages need a subscription to this topic"})
    reentry = fields.String(validate=validate.OneOf(["per_occurrence", "once", "not_while_active"]))
    sender = fields.String(allow_none=True)
    steps = fields.List(fields.Dict(), metadata={"description": STEPS_DOC})


class AutomationSchema(AutomationInSchema):
    id = fields.Integer()
    status = fields.String(metadata={"description": "draft, active, paused"})
    enabled_at = fields.String(allow_none=True)
    created_at = fields.String()
    updated_at = fields.String()


class AutomationPageSchema(PageSchema):
    items = fields.List(fields.Nested(AutomationSchema))


class StepStatsSchema(Schema):
    position = fields.Integer()
    kind = fields.String()
    entered = fields.Integer()
    sent = fields.Integer()
    skipped = fields.Integer()
    failed = fields.Integer()
    waiting = fields.Integer()
    exited = fields.Integer()


class AutomationStatsSchema(Schema):
    id = fields.Integer()
    status = fields.String()
    entered = fields.Integer()
    runs = fields.Dict(keys=fields.String(), values=fields.Integer())
    steps = fields.List(fields.Nested(StepStatsSchema))


class EventInSchema(Schema):
    name = fields.String(required=True)
    contact = fields.Dict(required=True, metadata={"description": '{"id"} or {"email"} or {"phone"}'})
    data = fields.Dict()
    occurred_at = fields.String()


class EventSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    contact_id = fields.Integer()
    occurred_at = fields.String()


__all__ = ["AutomationInSchema", "AutomationSchema", "AutomationPageSchema", "AutomationStatsSchema",
           "EventInSchema", "EventSchema", "PageQuerySchema"]
