"""Independent read-only statements run at once, each on a connection of its own (threads: the work
is the database's, and a thread waiting for its answer does not hold the GIL). For reports on
PostgreSQL whose parts are independent scans: on a machine with idle cores they finish together.
Each part is its own statement, as it would be one after another under READ COMMITTED."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

import sqlalchemy as sa

from envoi.extensions import db

T = TypeVar("T")
R = TypeVar("R")


def parts() -> int:
    """How many parts a scan is worth splitting into: the machine's cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def on_connections(fn: Callable[[sa.Connection, T], R], items: Iterable[T], settings: tuple[str, ...] = ()) -> list[R]:
    """[fn(conn, item) for item in items], at once, each item on a connection of its own, in a
    transaction where `settings` (SET LOCAL ...) apply; no JIT (planning costs more than it saves)."""
    engine = db.engine
    items = list(items)

    def run(item: T) -> R:
        with engine.connect() as conn:
            for statement in ("SET LOCAL jit = off", *settings):
                conn.execute(sa.text(statement))
            return fn(conn, item)

    if len(items) < 2:
        return [run(item) for item in items]
    with ThreadPoolExecutor(len(items), thread_name_prefix="envoi-parallel") as pool:
        return list(pool.map(run, items))
