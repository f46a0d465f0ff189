"""Automation: journeys (welcome series, birthdays, purchase follow-ups, win-back)."""


def register(app, api) -> None:
    """/api/v1/automations and /api/v1/events."""
    from automation import models  # noqa: F401  (journey_runs, which deliveries refer to)
    from automation.api import blp, events_blp

    for bp in (blp, events_blp):
        api.register_blueprint(bp, url_prefix="/api/v1" + bp.url_prefix)
