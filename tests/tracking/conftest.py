"""Each tracking test starts with empty hit buffers (this process's, and the Redis list it pushes to)."""
import pytest


@pytest.fixture(autouse=True)
def _empty_hit_buffer(app):
    from campaigns import tracking

    with app.app_context():
        tracking.flush_hits()  # anything an earlier test left in this process goes to Redis, deleted below
        client = tracking._redis()
        client.delete(tracking.HITS, tracking.DRAINING, *client.keys(tracking.DRAINING + ":*"))
    yield
