"""REST API of segments: CRUD, live count, preview of unsaved rules, CSV export of members."""
from __future__ import annotations

from flask import Response, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from contacts.schemas import ContactSchema, PageQuerySchema, PageSchema
from envoi.api import SECURITY, json_object, page_limit
from envoi.auth.api import readonly_or, require
from segments import services

blp = Blueprint("segments", __name__, url_prefix="/segments", description="Segments: rules over the customer file")

RULES_DOC = "segment rules (see DESIGN.md, Segment rules): {all|any|not|field|purchases|rfm|engagement|subscription}"


class SegmentSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True)
    rules = fields.Dict(required=True, metadata={"description": RULES_DOC})
    created_at = fields.String(dump_only=True)
    updated_at = fields.String(dump_only=True)


class SegmentPatchSchema(Schema):
    name = fields.String()
    rules = fields.Dict(metadata={"description": RULES_DOC})


class SegmentPageSchema(PageSchema):
    items = fields.List(fields.Nested(SegmentSchema))


class RulesSchema(Schema):
    rules = fields.Dict(required=True, metadata={"description": RULES_DOC})


class CountSchema(Schema):
    count = fields.Integer()


class PreviewSchema(CountSchema):
    sample = fields.List(fields.Nested(ContactSchema))


@blp.route("")
class Segments(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, SegmentPageSchema)
    def get(self, args):
        """Saved segments, in id order."""
        items, nxt = services.list_segments(args["cursor"], page_limit(args))
        return {"items": items, "next": nxt}

    @blp.doc(security=SECURITY)
    @blp.arguments(SegmentSchema)
    @blp.response(201, SegmentSchema)
    def post(self, data):
        """Save a segment; its rules are validated (422 names the path of each problem)."""
        body = json_object()
        return services.segment_to_dict(services.create_segment(body["name"], body["rules"]))


@blp.route("/preview", methods=["POST"])
@blp.doc(security=SECURITY)
@blp.arguments(RulesSchema)
@blp.response(200, PreviewSchema)
@require("viewer")
def preview(data):
    """Count and the first 10 members of unsaved rules."""
    return services.preview(json_object()["rules"])


@blp.route("/<id:segment_id>")
class SegmentById(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.response(200, SegmentSchema)
    def get(self, segment_id):
        return services.segment_to_dict(services.get_segment(segment_id))

    @blp.doc(security=SECURITY)
    @blp.arguments(SegmentPatchSchema)
    @blp.response(200, SegmentSchema)
    def patch(self, data, segment_id):
        """Rename and/or replace the rules."""
        body = json_object()
        return services.segment_to_dict(services.update_segment(
            segment_id, {k: body[k] for k in ("name", "rules") if k in body}))

    @blp.doc(security=SECURITY)
    @blp.response(204)
    def delete(self, segment_id):
        services.delete_segment(segment_id)
        return ""


@blp.route("/<id:segment_id>/count")
@blp.doc(security=SECURITY)
@blp.response(200, CountSchema)
@require("viewer")
def count(segment_id):
    """How many contacts are in the segment now."""
    return {"count": services.count_segment(segment_id)}


@blp.route("/<id:segment_id>/export")
@blp.doc(security=SECURITY, responses={"200": {"description": "CSV of the members",
                                               "content": {"text/csv": {"schema": {"type": "string"}}}}})
@require("marketer")
def export(segment_id):
    """The segment's members as CSV (contact columns), streamed."""
    from contacts.exporter import csv_pages

    services.get_segment(segment_id)  # 404 before the 200 is sent
    pages = csv_pages({"segment": segment_id})
    first = next(pages)[0]  # the filters are checked here, still before streaming

    def body():
        yield first
        for text, _ in pages:
            yield text

    resp = Response(stream_with_context(body()), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="segment-{segment_id}.csv"'
    return resp
