"""Dramatiq workers: `dramatiq workers` imports this package, which sets the broker first,
then declares the actors (actors attach to the broker when declared)."""
from workers.broker import setup_broker

broker = setup_broker()

from workers import actors  # noqa: E402,F401  (declares the actors on the broker)
from workers import periodic  # noqa: E402,F401
from workers import optin, campaigns  # noqa: E402,F401
from workers import automation  # noqa: E402,F401
from workers import tracking  # noqa: E402,F401
