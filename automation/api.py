"""/api/v1/automations (CRUD, enable/pause/resume, stats) and /api/v1/events."""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from automation import services
from automation.schemas import (AutomationInSchema, AutomationPageSchema, AutomationSchema, AutomationStatsSchema,
                                EventInSchema, EventSchema, PageQuerySchema)
from envoi.api import SECURITY, json_object, page_limit
from envoi.auth.api import readonly_or, require

blp = Blueprint("automations", __name__, url_prefix="/automations", description="Automations (journeys)")
events_blp = Blueprint("events", __name__, url_prefix="/events", description="Events for event triggers")


@blp.route("")
class Automations(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, AutomationPageSchema)
    def get(self, args):
        """Automations, newest first."""
        items, nxt = services.list_automations(args["cursor"], page_limit(args))
        return {"items": items, "next": nxt}

    @blp.doc(security=SECURITY)
    @blp.arguments(AutomationInSchema)
    @blp.response(201, AutomationSchema)
    def post(self, data):
        """A new automation, in draft. 422 names each field at fault (steps[i].html: with the line)."""
        return services.automation_to_dict(services.create_automation(json_object()))


@blp.route("/<id:automation_id>")
class AutomationById(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.response(200, AutomationSchema)
    def get(self, automation_id):
        return services.automation_to_dict(services.get_automation(automation_id))

    @blp.doc(security=SECURITY)
    @blp.arguments(AutomationInSchema)
    @blp.response(200, AutomationSchema)
    def patch(self, data, automation_id):
        """Edit; steps only while not active (409: pause it first)."""
        return services.automation_to_dict(services.update_automation(automation_id, json_object()))

    @blp.doc(security=SECURITY)
    @blp.response(204)
    def delete(self, automation_id):
        """Delete a draft or paused automation (409 while active); its messages stay in the contacts' history."""
        services.delete_automation(automation_id)
        return ""


def _control(name: str):
    def view(automation_id):
        return services.automation_to_dict(getattr(services, name)(automation_id))

    view.__name__ = name
    view.__doc__ = {"enable": "Start enrolling contacts and taking steps.",
                    "pause": "Stop taking steps; contacts wait in place.",
                    "resume": "Continue a paused automation."}[name]
    return view


for _name in ("enable", "pause", "resume"):
    blp.route(f"/<id:automation_id>/{_name}", methods=["POST"], endpoint=_name)(
        require("marketer")(blp.doc(security=SECURITY)(blp.response(200, AutomationSchema)(_control(_name)))))


@blp.route("/<id:automation_id>/stats")
@require("viewer")
@blp.doc(security=SECURITY)
@blp.response(200, AutomationStatsSchema)
def stats(automation_id):
    """Per step: entered, sent, skipped, failed, waiting, exited; runs by status."""
    return services.stats(automation_id)


@events_blp.route("", methods=["POST"])
@require("marketer")
@events_blp.doc(security=SECURITY)
@events_blp.arguments(EventInSchema)
@events_blp.response(202, EventSchema)
def post_event(data):
    """Record an event (name, contact ref, data): automations with an `event` trigger of that name
    enroll the contact at the next tick. 404 for an unknown contact."""
    event = services.record_event(json_object())
    return {"id": event.id, "name": event.name, "contact_id": event.contact_id,
            "occurred_at": event.occurred_at.isoformat()}
