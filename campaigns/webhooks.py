"""POST /webhooks/twilio/status: delivery status callbacks (signature checked)."""
from flask import Blueprint, request

from envoi.errors import ValidationError

bp = Blueprint("campaign_webhooks", __name__)


@bp.post("/webhooks/twilio/status")
def twilio_status():
    """Twilio tells how an SMS went; the delivery moves forward only (a late callback changes nothing)."""
    from campaigns.dispatch import record_sms_status
    from optin.twilio import check_twilio_signature

    params = check_twilio_signature()
    sid, status = params.get("MessageSid", ""), params.get("MessageStatus", "")
    fields = {}
    if not sid or len(sid) > 300:
        fields["MessageSid"] = "required (at most 300 characters)"
    if not status or len(status) > 32:
        fields["MessageStatus"] = "required"
    delivery_id = request.args.get("d")
    if delivery_id is not None and (not delivery_id.isdigit() or not 0 < int(delivery_id) < 2**63):
        fields["d"] = "a delivery id"
    code = params.get("ErrorCode") or None
    if code is not None and not code.isdigit():
        fields["ErrorCode"] = "a number"
    if fields:
        raise ValidationError("invalid status callback", fields)
    record_sms_status(sid, status.lower(), int(delivery_id) if delivery_id else None,
                      int(code) if code and len(code) < 10 else None)
    return "", 204
