"""Marshmallow schemas of /api/v1/forms: they document the API; optin.services.clean_form
checks the values (declared attributes, existing topics, URLs, origins, popup numbers)."""
from marshmallow import Schema, fields


class PopupSchema(Schema):
    trigger = fields.String(metadata={"description": "inline | delay | exit | scroll"})
    delay_seconds = fields.Integer(metadata={"description": "0-3600, for trigger delay"})
    scroll_percent = fields.Integer(metadata={"description": "0-100, for trigger scroll"})
    frequency_days = fields.Integer(metadata={"description": "not shown again for N days after a close"})


class FormInSchema(Schema):
    slug = fields.Raw(metadata={"description": "lower-case letters, digits, - and _"})
    title = fields.Raw()
    fields_ = fields.Raw(data_key="fields", metadata={"description": "email, phone and contact personal fields"})
    attributes = fields.Raw(metadata={"description": "declared custom attribute keys"})
    channels = fields.Raw(metadata={"description": "email and/or sms"})
    topics = fields.Raw(metadata={"description": "topic slugs"})
    double_opt_in = fields.Raw(metadata={"description": "default true"})
    consent_text = fields.Raw()
    consent_version = fields.Raw()
    redirect_url = fields.Raw(allow_none=True)
    confirm_redirect_url = fields.Raw(allow_none=True)
    allowed_origins = fields.Raw(metadata={"description": "origins (scheme://host[:port]) that may embed the form"})
    popup = fields.Raw()
    id = fields.Raw(load_only=True)
    created_at = fields.Raw(load_only=True)
    updated_at = fields.Raw(load_only=True)


class FormSchema(Schema):
    id = fields.Integer()
    slug = fields.String()
    title = fields.String()
    fields_ = fields.List(fields.String(), data_key="fields")
    attributes = fields.List(fields.String())
    channels = fields.List(fields.String())
    topics = fields.List(fields.String())
    double_opt_in = fields.Boolean()
    consent_text = fields.String()
    consent_version = fields.String()
    redirect_url = fields.String(allow_none=True)
    confirm_redirect_url = fields.String(allow_none=True)
    allowed_origins = fields.List(fields.String())
    popup = fields.Nested(PopupSchema)
    created_at = fields.String()
    updated_at = fields.String()


class FormPageSchema(Schema):
    items = fields.List(fields.Nested(FormSchema))
    next = fields.String(allow_none=True)
