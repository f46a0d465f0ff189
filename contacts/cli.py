"""`flask contacts ...`: import, export, dedupe."""
from flask.cli import AppGroup

contacts_cli = AppGroup("contacts", help="The customer file: import, export, dedupe.")
