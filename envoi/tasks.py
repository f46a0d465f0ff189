"""Enqueue Dramatiq messages only after the transaction that wrote their rows commits."""
from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.orm import Session

from envoi.extensions import db

_KEY = "envoi_after_commit"


def enqueue_after_commit(actor, *args, **kwargs) -> None:
    """Send `actor.send(*args)` once the current session commits; drop it on rollback."""
    db.session().info.setdefault(_KEY, []).append((actor, args, kwargs))


@event.listens_for(Session, "after_commit")
def _send(session):
    pending = session.info.pop(_KEY, None)
    for actor, args, kwargs in pending or ():
        actor.send(*args, **kwargs)


@event.listens_for(Session, "after_rollback")
def _drop(session):
    session.info.pop(_KEY, None)
