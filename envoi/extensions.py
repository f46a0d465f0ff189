"""Extension singletons, bound to the app in create_app."""
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names so Alembic migrations are reviewable and portable.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
api = Api()


from flask import current_app, has_app_context, request  # noqa: E402
from flask_limiter import Limiter  # noqa: E402
from flask_limiter.util import get_remote_address  # noqa: E402


class AppLimiter(Limiter):
    """flask-limiter whose storage (RATELIMIT_STORAGE_URI, Redis) belongs to each app.

    The stock extension keeps one storage per Limiter object, so a second app built in the same
    process (tests, scripts) would silently move every app's counters to its own Redis."""

    # Endpoints that count their own requests (optin/ratelimit.py) and have no limit of flask-limiter's
    # (there are no default limits): its before_request hook skips them outright.
    self_limited: set = {"optin.form_page"}

    def init_app(self, app) -> None:
        super().init_app(app)
        app.extensions["envoi_limiter"] = (self._storage, self._limiter)

    def _check_request_limit(self, callable_name=None, in_middleware: bool = True) -> None:
        if in_middleware and request.endpoint in self.self_limited:
            return
        super()._check_request_limit(callable_name, in_middleware)

    def _state(self):
        if has_app_context():
            return current_app.extensions.get("envoi_limiter")
        return None

    @property
    def storage(self):
        state = self._state()
        return state[0] if state else super().storage

    @property
    def limiter(self):
        state = self._state()
        return state[1] if state else super().limiter


# Public endpoints (signup, resend) are limited per IP on Redis; see optin/views.py.
limiter = AppLimiter(key_func=get_remote_address, strategy="moving-window")
