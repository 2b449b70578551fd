"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis), against
the real stack: a fixed budget of generated requests, no 5xx, every response as documented."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 25


def test_api_conforms_to_its_schema(server):
    # Driven by hand rather than schemathesis' pytest plugin, whose lazy fixture loading does
    # not work with pytest 9.
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    # Not /v1: OpenAI's request shape has rules a JSON schema cannot state (n with stream, the
    # parameters refused), so schema-valid bodies are rightly refused there; tests/test_openai.py
    # covers those routes with the real openai client.
    operations = [op for op in (result.ok() for result in schema.get_all_operations())
                  if not op.path.startswith("/v1/")]
    assert {op.path for op in operations} >= {"/api/generate", "/generate", "/api/stream"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            for fields in (case.query, case.body):  # keep generations short: budget, not quality
                for key in ("max_new_tokens", "min_new_tokens"):
                    if isinstance(fields, dict) and isinstance(fields.get(key), int):
                        fields[key] = min(max(fields[key], 1), 16)
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.path, response.status_code, response.text)
            case.validate_response(response)

        check()
