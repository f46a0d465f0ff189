"""Pooled PostgreSQL connections: no ping on a busy server (a signup is BEGIN, one INSERT,
COMMIT), a ping before reusing one idle longer than PING_IDLE_SECONDS (the database may have
restarted meanwhile)."""
from __future__ import annotations

import sqlalchemy as sa

import envoi
from envoi.extensions import db


def test_a_connection_dropped_while_idle_is_replaced_before_use(app, client, monkeypatch):
    with app.app_context():
        engine = db.engine
    assert client.get("/healthz").status_code == 200
    if engine.dialect.name != "postgresql":
        return  # SQLite: no server to lose, no pool ping
    monkeypatch.setattr(envoi, "PING_IDLE_SECONDS", 0.0)  # every pooled connection counts as idle
    killer = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    with killer.connect() as conn:
        killed = conn.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'")).scalar()
    killer.dispose()
    assert killed >= 1
    try:
        for _ in range(3):  # every pooled connection was dropped: each is pinged and replaced
            assert client.get("/healthz").status_code == 200
    finally:
        engine.dispose()  # the dropped ones still pooled must not reach the next test's cleanup
