"""Property-based fuzzing of the whole REST API from its own OpenAPI document.

Whatever the input, the answer is never a 5xx: bad input is a 4xx with `{"error", "fields"}`.
"""
import os

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import make_api


def test_no_input_makes_the_api_fail(app, client):
    api = make_api(app, client, "admin", "fuzz@example.org")
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    failures, statuses = [], []

    for operation in operations:
        @given(case=operation.as_strategy())
        # Random on developers' machines (finds new bugs), the same examples in CI (no flaky main).
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=bool(os.environ.get("CI")))
        def check(case):
            response = case.call(headers=api.headers)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r:.200}: {response.status_code}")
            elif response.status_code >= 400 and response.headers.get("Content-Type", "").startswith("application/json"):
                assert set(response.json()) == {"error", "fields"}, response.text

        check()
    assert failures == []
    # The token works, so the fuzzing reached past authentication into the services.
    assert sum(200 <= s < 300 for s in statuses) > 20 and 401 not in statuses
