"""X-Twilio-Signature checks for /webhooks/twilio/* (inbound keywords, status callbacks)."""
from __future__ import annotations

from flask import current_app, request
from twilio.request_validator import RequestValidator

from envoi.errors import Forbidden


def check_twilio_signature() -> dict:
    """The form parameters of a request Twilio signed; Forbidden (403) otherwise.

    Twilio signs the public URL it called, so the URL is rebuilt from ENVOI_BASE_URL (the app
    may sit behind a proxy that changes host and scheme), never from the Host header.
    """
    token = current_app.config.get("TWILIO_AUTH_TOKEN")
    signature = request.headers.get("X-Twilio-Signature", "")
    params = request.form.to_dict(flat=True)
    url = current_app.config["BASE_URL"] + request.full_path.rstrip("?")
    if not token or not signature or not RequestValidator(token).validate(url, params, signature):
        raise Forbidden("invalid Twilio signature")
    return params


def sign_for_tests(url: str, params: dict, token: str) -> str:
    """The signature Twilio would send (used by tests and the fake Twilio server)."""
    return RequestValidator(token).compute_signature(url, params)
