"""/api/v1/campaigns: CRUD, test send, preview, send/pause/resume/cancel, stats."""
from __future__ import annotations

from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint

from campaigns import services
from campaigns.schemas import (CampaignInSchema, CampaignPageSchema, CampaignQuerySchema, CampaignSchema,
                               CampaignPreviewInSchema, CampaignPreviewSchema, CampaignSendInSchema, CampaignStatsSchema, CampaignTestInSchema,
                               CampaignTestOutSchema)
from envoi.api import SECURITY, json_object, page_limit
from envoi.auth.api import readonly_or, require

blp = Blueprint("campaigns", __name__, url_prefix="/campaigns", description="Campaigns")


def _author_id():
    user = g.get("user")
    return user.id if user is not None else None


@blp.route("")
class Campaigns(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.arguments(CampaignQuerySchema, location="query")
    @blp.response(200, CampaignPageSchema)
    def get(self, args):
        """Campaigns, newest first; `?status=` filters."""
        items, nxt = services.list_campaigns(args["cursor"], page_limit(args), args.get("status"))
        return {"items": items, "next": nxt}

    @blp.doc(security=SECURITY)
    @blp.arguments(CampaignInSchema)
    @blp.response(201, CampaignSchema)
    def post(self, data):
        """A new draft. 422 names each field at fault (templates: with the line)."""
        return services.campaign_to_dict(services.create_campaign(json_object(), author_id=_author_id()))


@blp.route("/<id:campaign_id>")
class CampaignById(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.response(200, CampaignSchema)
    def get(self, campaign_id):
        return services.campaign_to_dict(services.get_campaign(campaign_id))

    @blp.doc(security=SECURITY)
    @blp.arguments(CampaignInSchema)
    @blp.response(200, CampaignSchema)
    def patch(self, data, campaign_id):
        """Edit a draft, scheduled or paused campaign (409 otherwise)."""
        return services.campaign_to_dict(services.update_campaign(campaign_id, json_object()))

    @blp.doc(security=SECURITY)
    @blp.response(204)
    def delete(self, campaign_id):
        """Delete a draft (409 otherwise: cancel it)."""
        services.delete_campaign(campaign_id)
        return ""


@blp.route("/<id:campaign_id>/preview", methods=["POST"])
@require("viewer")
@blp.doc(security=SECURITY)
@blp.arguments(CampaignPreviewInSchema)
@blp.response(200, CampaignPreviewSchema)
def preview(data, campaign_id):
    """The message as a contact would get it: subject, html and text, or the SMS body and its segments."""
    return services.preview(campaign_id, json_object().get("contact_id"))


@blp.route("/<id:campaign_id>/test", methods=["POST"])
@require("marketer")
@blp.doc(security=SECURITY)
@blp.arguments(CampaignTestInSchema)
@blp.response(200, CampaignTestOutSchema)
def test(data, campaign_id):
    """Send now to the given addresses or numbers, subject prefixed [TEST]; not recorded as deliveries."""
    body = json_object()
    return services.send_test(campaign_id, body.get("to"), body.get("contact_id"))


@blp.route("/<id:campaign_id>/send", methods=["POST"])
@require("marketer")
@blp.doc(security=SECURITY)
@blp.arguments(CampaignSendInSchema)
@blp.response(200, CampaignSchema)
def send(data, campaign_id):
    """Send now, or at `at` (the campaign is then scheduled)."""
    from campaigns import dispatch
    from contacts.validation import parse_datetime

    at = data.get("at")
    campaign = dispatch.launch(campaign_id, at=parse_datetime(at, "at") if at else None, author_id=_author_id())
    return services.campaign_to_dict(campaign)


def _control(name: str):
    def view(campaign_id):
        from campaigns import dispatch

        return services.campaign_to_dict(getattr(dispatch, name)(campaign_id))

    view.__name__ = name
    view.__doc__ = {"pause": "Stop sending within a second; resume continues where it stopped.",
                    "resume": "Continue a paused campaign.",
                    "cancel": "Stop for good; what was not sent never will be."}[name]
    return view


for _name in ("pause", "resume", "cancel"):
    blp.route(f"/<id:campaign_id>/{_name}", methods=["POST"], endpoint=_name)(
        require("marketer")(blp.doc(security=SECURITY)(blp.response(200, CampaignSchema)(_control(_name)))))


@blp.route("/<id:campaign_id>/stats")
@require("viewer")
@blp.doc(security=SECURITY)
@blp.response(200, CampaignStatsSchema)
def stats(campaign_id):
    """targeted, sent, failed, bounced, skipped, delivered (SMS), unsubscribed ..."""
    from campaigns import dispatch

    return dispatch.stats(campaign_id)
