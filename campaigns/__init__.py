"""Campaigns, deliveries (the outbox and the sent-message log), rendering, channels, stats.
`register` wires its blueprints into the app."""


def register(app, api) -> None:
    """/api/v1/campaigns, /webhooks/twilio/status, the `flask campaigns` CLI."""
    import campaigns.models  # noqa: F401  (tables known to the metadata)
    from campaigns import api as campaigns_api
    from campaigns import webhooks
    from campaigns.cli import campaigns_cli

    app.register_blueprint(webhooks.bp)
    from campaigns import analytics_api, tracking_views

    app.register_blueprint(tracking_views.bp)
    api.register_blueprint(analytics_api.blp, url_prefix="/api/v1")
    api.register_blueprint(campaigns_api.blp, url_prefix="/api/v1" + campaigns_api.blp.url_prefix)
    app.cli.add_command(campaigns_cli)
