"""Public side: signup forms and popups, double opt-in, unsubscribe (RFC 8058), preference
centre, Twilio inbound keywords. `register` wires its blueprints into the app."""


def register(app, api) -> None:
    """Public blueprints (forms, embed script, confirm, unsubscribe, preferences, inbound webhook)
    and /api/v1/forms."""
    from optin import api as forms_api
    from optin import embed, views

    app.register_blueprint(views.bp)
    app.register_blueprint(embed.bp)
    api.register_blueprint(forms_api.blp, url_prefix="/api/v1" + forms_api.blp.url_prefix)
