"""REST API of the customer file: parse, call one service, answer. Errors map in envoi.errors."""
from __future__ import annotations

from flask import g, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint

from contacts import services
from contacts.schemas import (ActionInSchema, ActionSchema, AttributeSchema, ContactInSchema, ContactPageSchema, ContactPatchSchema,
                              ContactQuerySchema, ContactSchema, PageQuerySchema,
                              TimelinePageSchema, TopicPatchSchema, TopicSchema)
from envoi.api import SECURITY, json_object, page_limit
from envoi.auth.api import readonly_or, require

blp = Blueprint("contacts", __name__, url_prefix="/contacts", description="The customer file")
purchases_blp = Blueprint("purchases", __name__, url_prefix="/purchases", description="Purchases (reactions)")
topics_blp = Blueprint("topics", __name__, url_prefix="/topics", description="Subscription topics")
attributes_blp = Blueprint("attributes", __name__, url_prefix="/attributes", description="Declared custom attributes")



def _context() -> dict:
    return {"ip": request.remote_addr, "user_agent": (request.user_agent.string or "")[:500],
            "source": "api"}


@blp.route("")
class Contacts(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.arguments(ContactQuerySchema, location="query")
    @blp.response(200, ContactPageSchema)
    def get(self, args):
        """List contacts (filters, cursor pages in id order)."""
        cursor = args.pop("cursor")
        limit = page_limit(args)
        args.pop("limit")
        items, nxt = services.list_contacts(args, cursor, limit)
        return {"items": items, "next": nxt}

    @blp.doc(security=SECURITY)
    @blp.arguments(ContactInSchema)
    @blp.response(200, ContactSchema)
    @blp.alt_response(201, schema=ContactSchema, description="created")
    def post(self, data):
        """Upsert a contact by email, then phone. 201 when created, 200 when updated."""
        contact, created = services.upsert_contact(json_object(), method="api", author_id=g.user.id,
                                                   context=_context())
        return services.contact_to_dict(contact), 201 if created else 200


@blp.route("/<id:contact_id>")
class ContactById(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.response(200, ContactSchema)
    def get(self, contact_id):
        """One contact."""
        return services.contact_to_dict(services.get_contact(contact_id))

    @blp.doc(security=SECURITY)
    @blp.arguments(ContactPatchSchema(partial=True))
    @blp.response(200, ContactSchema)
    def patch(self, data, contact_id):
        """Change the given fields only."""
        contact = services.update_contact(contact_id, json_object(), author_id=g.user.id)
        return services.contact_to_dict(contact)

    @blp.doc(security=SECURITY)
    @blp.response(204)
    def delete(self, contact_id):
        """Erase (anonymise) the contact: personal data goes, counts stay, re-import is blocked."""
        services.erase_contact(contact_id, author_id=g.user.id)
        return ""


@blp.route("/<id:contact_id>/timeline")
@blp.doc(security=SECURITY)
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, TimelinePageSchema)
@require("viewer")
def contact_timeline(args, contact_id):
    """Actions, consents and purchases, newest first."""
    items, nxt = services.timeline(contact_id, args["cursor"], page_limit(args))
    return {"items": items, "next": nxt}


@blp.route("/<id:contact_id>/export")
@blp.doc(security=SECURITY)
@require("marketer")
def contact_export(contact_id):
    """Everything stored about the person (RGPD access request), as JSON."""
    resp = jsonify(services.export_contact(contact_id))
    resp.headers["Content-Disposition"] = f'attachment; filename="contact-{contact_id}.json"'
    return resp


@blp.route("/<id:contact_id>/actions", methods=["POST"])
@blp.doc(security=SECURITY)
@blp.arguments(ActionInSchema)
@blp.response(201, ActionSchema)
@require("marketer")
def contact_action(data, contact_id):
    """Log a call, meeting, mailing, postal mailing, SMS or note."""
    action = services.record_action(contact_id, data["kind"], data=data.get("data"),
                                    occurred_at=data.get("occurred_at"), author_id=g.user.id)
    return {"id": action.id, "contact_id": action.contact_id, "kind": action.kind,
            "occurred_at": action.occurred_at.isoformat(), "author_id": action.author_id, "data": action.data}


@purchases_blp.route("", methods=["POST"])
@purchases_blp.doc(security=SECURITY, requestBody={"content": {"application/json": {"schema": {
    "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}}}})
@require("marketer")
def post_purchases():
    """Record one purchase or a list (all or none). Lines already recorded (order_ref + sku) are skipped."""
    body = request.get_json(silent=True)
    items = [body] if isinstance(body, dict) else body
    result = services.record_purchases(items)
    return jsonify(result), 201


@topics_blp.route("")
class Topics(MethodView):
    decorators = [readonly_or("marketer")]

    @topics_blp.doc(security=SECURITY)
    @topics_blp.response(200, TopicSchema(many=True))
    def get(self):
        """All topics."""
        from contacts.models import Topic
        from envoi.extensions import db

        return db.session.scalars(db.select(Topic).order_by(Topic.slug)).all()

    @topics_blp.doc(security=SECURITY)
    @topics_blp.arguments(TopicSchema)
    @topics_blp.response(201, TopicSchema)
    def post(self, data):
        """Create a topic (newsletter, offers ...)."""
        return services.create_topic(data["slug"], data["name"], data.get("description", ""))


@topics_blp.route("/<id:topic_id>")
class TopicById(MethodView):
    decorators = [readonly_or("marketer")]

    @topics_blp.doc(security=SECURITY)
    @topics_blp.arguments(TopicPatchSchema)
    @topics_blp.response(200, TopicSchema)
    def patch(self, data, topic_id):
        return services.update_topic(topic_id, data)

    @topics_blp.doc(security=SECURITY)
    @topics_blp.response(204)
    def delete(self, topic_id):
        services.delete_topic(topic_id)
        return ""


@attributes_blp.route("")
class Attributes(MethodView):
    decorators = [readonly_or("admin")]

    @attributes_blp.doc(security=SECURITY)
    @attributes_blp.response(200, AttributeSchema(many=True))
    def get(self):
        """Declared custom attributes."""
        from contacts.models import AttributeDefinition
        from envoi.extensions import db

        return db.session.scalars(db.select(AttributeDefinition).order_by(AttributeDefinition.key)).all()

    @attributes_blp.doc(security=SECURITY)
    @attributes_blp.arguments(AttributeSchema)
    @attributes_blp.response(201, AttributeSchema)
    def post(self, data):
        """Declare a custom attribute and its type (string, number, boolean, date)."""
        return services.define_attribute(data["key"], data["type"], data.get("label", ""))
