"""Marshmallow schemas: they document the API (OpenAPI) and check JSON types.

Domain validation (addresses, numbers, declared attributes, consent) is in validation.py,
shared with imports and forms.
"""
from marshmallow import Schema, fields, validate


class ConsentSchema(Schema):
    source = fields.String(required=True, metadata={"description": "where the consent was given"})
    at = fields.String(required=True, metadata={"description": "ISO 8601 time of the consent"})
    text = fields.String(allow_none=True, metadata={"description": "the exact text the person agreed to"})


class ContactInSchema(Schema):
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True, metadata={"description": "any format; stored as E.164"})
    salutation = fields.String(allow_none=True)
    first_name = fields.String(allow_none=True)
    last_name = fields.String(allow_none=True)
    birth_date = fields.String(allow_none=True, metadata={"description": "YYYY-MM-DD"})
    gender = fields.String(allow_none=True, metadata={"description": "female, male or other"})
    address = fields.String(allow_none=True)
    postal_code = fields.String(allow_none=True)
    city = fields.String(allow_none=True)
    country = fields.String(allow_none=True, metadata={"description": "ISO 3166 alpha-2"})
    language = fields.String(allow_none=True)
    timezone = fields.String(allow_none=True)
    company_name = fields.String(allow_none=True)
    sector = fields.String(allow_none=True)
    headcount = fields.Integer(allow_none=True)
    lifecycle = fields.String(allow_none=True, validate=validate.OneOf(["prospect", "customer", "former"]))
    source = fields.String(allow_none=True)
    tags = fields.List(fields.String(), allow_none=True, metadata={"description": "replaces the tags"})
    add_tags = fields.List(fields.String())
    remove_tags = fields.List(fields.String())
    attributes = fields.Dict(keys=fields.String(), allow_none=True,
                             metadata={"description": "declared attributes only; null removes a key"})
    topics = fields.List(fields.String(), allow_none=True, metadata={"description": "topic slugs subscribed"})
    email_status = fields.String(allow_none=True)
    sms_status = fields.String(allow_none=True)
    consent = fields.Nested(ConsentSchema, allow_none=True,
                            metadata={"description": "required to set a status to confirmed"})


class ContactPatchSchema(ContactInSchema):
    """Same fields as an upsert; every one optional."""


class ContactSchema(Schema):
    id = fields.Integer()
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    salutation = fields.String(allow_none=True)
    first_name = fields.String(allow_none=True)
    last_name = fields.String(allow_none=True)
    birth_date = fields.String(allow_none=True)
    gender = fields.String(allow_none=True)
    address = fields.String(allow_none=True)
    postal_code = fields.String(allow_none=True)
    city = fields.String(allow_none=True)
    country = fields.String(allow_none=True)
    language = fields.String(allow_none=True)
    timezone = fields.String(allow_none=True)
    company_name = fields.String(allow_none=True)
    sector = fields.String(allow_none=True)
    headcount = fields.Integer(allow_none=True)
    lifecycle = fields.String()
    source = fields.String(allow_none=True)
    tags = fields.List(fields.String())
    attributes = fields.Dict()
    topics = fields.List(fields.String())
    email_status = fields.String()
    sms_status = fields.String()
    purchase_count = fields.Integer()
    purchase_total = fields.String()
    first_purchase_at = fields.String(allow_none=True)
    last_purchase_at = fields.String(allow_none=True)
    last_activity_at = fields.String(allow_none=True)
    created_at = fields.String()
    updated_at = fields.String()


class PageSchema(Schema):
    next = fields.String(allow_none=True, metadata={"description": "cursor of the next page, null at the end"})


class ContactPageSchema(PageSchema):
    items = fields.List(fields.Nested(ContactSchema))


class PageQuerySchema(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String(load_default=None)


class ContactQuerySchema(PageQuerySchema):
    email = fields.String()
    phone = fields.String()
    city = fields.String()
    postal_code = fields.String()
    country = fields.String()
    language = fields.String()
    lifecycle = fields.String()
    email_status = fields.String()
    sms_status = fields.String()
    source = fields.String()
    tag = fields.String()
    topic = fields.String()
    q = fields.String(metadata={"description": "prefix of the email or the last name"})
    segment = fields.Integer(metadata={"description": "id of a saved segment: its members now"})
    updated_since = fields.String(metadata={"description": "ISO time"})


class ActionInSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(["call", "meeting", "mailing", "postal_mailing", "note", "sms"]))
    occurred_at = fields.String(allow_none=True)
    data = fields.Dict(load_default=dict, metadata={"description": "free JSON: subject, outcome, notes ..."})


class ActionSchema(Schema):
    id = fields.Integer()
    contact_id = fields.Integer()
    kind = fields.String()
    occurred_at = fields.String()
    author_id = fields.Integer(allow_none=True)
    data = fields.Dict()


class TimelinePageSchema(PageSchema):
    items = fields.List(fields.Dict())


class TopicSchema(Schema):
    id = fields.Integer(dump_only=True)
    slug = fields.String(required=True)
    name = fields.String(required=True)
    description = fields.String(load_default="")


class TopicPatchSchema(Schema):
    name = fields.String()
    description = fields.String()


class AttributeSchema(Schema):
    id = fields.Integer(dump_only=True)
    key = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["string", "number", "boolean", "date"]))
    label = fields.String(load_default="")


class ImportJobSchema(Schema):
    id = fields.Integer()
    filename = fields.String()
    status = fields.String()
    rows = fields.Integer()
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    rejected = fields.Integer()
    bytes_read = fields.Integer(metadata={"description": "bytes of the file imported so far (committed after each chunk)"})
    bytes_total = fields.Integer(allow_none=True, metadata={"description": "size of the file; null until the job starts"})
    percent = fields.Integer(allow_none=True, metadata={"description": "0-100; null until the job starts"})
    error = fields.String(allow_none=True)
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
