"""Each tracking test starts with an empty hit buffer (the Redis list the public routes push to)."""
import pytest


@pytest.fixture(autouse=True)
def _empty_hit_buffer(app):
    from campaigns import tracking

    with app.app_context():
        client = tracking._redis()
        client.delete(tracking.HITS, tracking.DRAINING, *client.keys(tracking.DRAINING + ":*"))
    yield
