"""admin search: prefix indexes for the contact search box (PostgreSQL)

The search matches the start of the email, of lower(last_name) or of the phone number
(contacts.query.quick_search). PostgreSQL answers it with the byte-wise text_pattern_ops
operators, whatever the database's collation, so it needs these three indexes; SQLite
compares with its BINARY collation and uses the unique email/phone indexes and
ix_contacts_last_name that exist already.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 20:45:00

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_contacts_email_prefix", "email text_pattern_ops"),
    ("ix_contacts_last_name_prefix", "lower(last_name) text_pattern_ops"),
    ("ix_contacts_phone_prefix", "phone text_pattern_ops"),
)


def upgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    for name, expr in INDEXES:
        op.execute(sa.text(f"CREATE INDEX {name} ON contacts ({expr})"))


def downgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    for name, _ in INDEXES:
        op.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
