"""Property-based fuzz of the whole API from its own OpenAPI schema (schemathesis): no 500s, and every response
(status code, content type, body) matches the schema. A real API process on PostgreSQL and Redis.

positive_data_acceptance is left out on purpose: the resource limits (memory and work estimates that combine
several fields) cannot be written in JSON Schema, so some schema-valid specs are rightly refused with 422."""

from __future__ import annotations

import os
import subprocess

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

from tests.stack import BIN, ROOT

EXAMPLES_PER_OPERATION = 100
NEGATIVE_EXAMPLES = 200


@pytest.fixture(scope="module")
def service_env(service_env):
    return {**service_env, "GRADLAB_AUTH": "required"}


def test_api_conforms_to_its_schema(api, stack):
    out = subprocess.run(
        [str(BIN / "gradlab"), "keys", "create", "--tenant", "fuzz"],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    auth = {"Authorization": "Bearer " + out.split("key: ", 1)[1].strip()}
    schema = schemathesis.openapi.from_url(stack.api_url + "/openapi.json")
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            case.call_and_validate(headers=auth, excluded_checks=[positive_data_acceptance])
            calls[label] = calls.get(label, 0) + 1

        fuzz()
    print(f"\nschemathesis: {sum(calls.values())} requests over {len(calls)} operations: {calls}")
    assert len(calls) == len(list(schema.get_all_operations())) and sum(calls.values()) >= 100


def test_job_bodies_outside_the_schema_are_refused(api, stack):
    """Negative data for POST /v1/jobs (bodies the schema forbids): every one is refused, so the service is no
    laxer than its published schema. Schemathesis's mutations rarely pick a coercible value (``"5"`` for an
    integer), so those are pinned in test_hostile.py::test_job_bodies_are_strict."""
    out = subprocess.run(
        [str(BIN / "gradlab"), "keys", "create", "--tenant", "fuzz-negative"],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    auth = {"Authorization": "Bearer " + out.split("key: ", 1)[1].strip()}
    schema = schemathesis.openapi.from_url(stack.api_url + "/openapi.json")
    operation = schema["/v1/jobs"]["POST"]
    calls = []

    @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    @settings(
        max_examples=NEGATIVE_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        negative = {
            location.value for location, info in case.meta.components.items() if info.mode == GenerationMode.NEGATIVE
        }
        if negative != {"body"}:
            return  # only bodies are judged here (a broken header would be replaced by the valid key below)
        case.call_and_validate(headers=auth, checks=[negative_data_rejection])
        calls.append(case.body)

    fuzz()
    print(f"\nschemathesis: {len(calls)} negative job bodies refused")
    assert len(calls) >= NEGATIVE_EXAMPLES // 10  # most draws break a header or the path instead
