"""The marketer's web UI under /admin: server-rendered pages over the same services as the API."""


def register(app) -> None:
    """Blueprints of the admin UI: the shell (login, dashboard, outbox, users, settings) and one per domain."""
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    app.config.setdefault("ADMIN_LOGIN_RATE", "10 per minute")
    app.config.setdefault("ADMIN_DASHBOARD_CACHE_SECONDS", 60)
    from automation.admin import bp as automations_bp
    from envoi.admin.analytics import bp as analytics_bp
    from campaigns.admin import bp as campaigns_bp
    from contacts.admin import bp as contacts_bp
    from envoi.admin.settings import bp as settings_bp
    from envoi.admin.views import bp
    from optin.admin import bp as forms_bp
    from segments.admin import bp as segments_bp

    for blueprint in (bp, contacts_bp, forms_bp, segments_bp, campaigns_bp, automations_bp,
                      analytics_bp, settings_bp):
        app.register_blueprint(blueprint)
