"""Helpers for segment tests: rows inserted with core inserts (fast, exact values)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

NOW = datetime.now(timezone.utc).replace(microsecond=0)


class Seed:
    def __init__(self):
        from envoi.extensions import db

        self.db = db
        self.n = 0

    def contact(self, **values) -> int:
        from contacts.models import Contact

        self.n += 1
        row = {"email": f"c{self.n}@example.org", "tags": [], "attributes": {}, "lifecycle": "prospect",
               "email_status": "none", "sms_status": "none", "created_at": NOW, "updated_at": NOW,
               "purchase_count": 0, "purchase_total": Decimal("0"), **values}
        return self.db.session.execute(sa.insert(Contact).values(**row).returning(Contact.id)).scalar_one()

    def purchase(self, contact_id: int, *, sku="SKU-1", category="shoes", amount="10.00", days_ago=1, **kw) -> None:
        from contacts.models import Purchase

        self.db.session.execute(sa.insert(Purchase).values(
            contact_id=contact_id, sku=sku, category=category, amount=Decimal(str(amount)), currency="EUR",
            quantity=1, occurred_at=NOW - timedelta(days=days_ago), created_at=NOW, **kw))

    def refresh_aggregates(self) -> None:
        """What the purchase service keeps: count, total, first and last purchase per contact."""
        from contacts.models import Contact, Purchase

        p = Purchase
        stats = self.db.session.execute(sa.select(p.contact_id, sa.func.count(), sa.func.sum(p.amount),
                                                  sa.func.min(p.occurred_at), sa.func.max(p.occurred_at))
                                        .group_by(p.contact_id)).all()
        for cid, count, total, first, last in stats:
            self.db.session.execute(sa.update(Contact).where(Contact.id == cid).values(
                purchase_count=count, purchase_total=total, first_purchase_at=first, last_purchase_at=last))

    def event(self, contact_id: int, kind: str, *, days_ago=1, campaign_id=None, channel="email", is_bot=False):
        from segments.models import MessageEvent

        self.db.session.execute(sa.insert(MessageEvent).values(
            contact_id=contact_id, kind=kind, campaign_id=campaign_id, channel=channel, is_bot=is_bot,
            occurred_at=NOW - timedelta(days=days_ago), data={}))

    def commit(self):
        self.db.session.commit()


@pytest.fixture
def seed(ctx):
    return Seed()


@pytest.fixture
def members(ctx):
    """members(rules) -> the set of matching contact ids, through segment_query."""
    from envoi.extensions import db
    from segments.services import segment_query

    def run(rules) -> set[int]:
        return set(db.session.scalars(segment_query(rules)))

    return run
