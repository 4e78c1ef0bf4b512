"""Property-based fuzzing of the HTTP API from its own OpenAPI document: no request may cause a 5xx.

Runs against a real server subprocess (the tiny model). Each operation of the served schema gets a
bounded number of generated requests (positive and negative data), so the whole run stays well
under a minute on a 2-core machine. The operations are driven through schemathesis' strategies and
plain hypothesis rather than its pytest plugin, which does not support this pytest version.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from bench.server_proc import ServerProcess

MAX_EXAMPLES = 12
SERVED_MODEL = "tiny"  # the name of the fault server's model (tests/conftest.py: tiny_onnx)


@pytest.fixture(scope="module")
def operations(fault_server: ServerProcess) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{fault_server.http_url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    return found


def test_schema_lists_the_api(operations: list[Any]) -> None:
    labels = {op.label for op in operations}
    assert "POST /segment" in labels, sorted(labels)
    assert len(operations) >= 5


def _variants(operation: Any) -> list[tuple[str, dict[str, Any]]]:
    """Schema-valid and schema-violating data; operations on ``{model}`` also against the served model."""
    runs: list[tuple[str, dict[str, Any]]] = [
        ("positive", {"generation_mode": GenerationMode.POSITIVE}),
        ("negative", {"generation_mode": GenerationMode.NEGATIVE}),
    ]
    if "{model}" in operation.path:
        runs += [
            (f"{name}, model={SERVED_MODEL}", {**kw, "path_parameters": {"model": SERVED_MODEL}})
            for name, kw in runs
        ]
    return runs


def test_no_server_errors(operations: list[Any], fault_server: ServerProcess) -> None:
    failures: list[str] = []
    unsatisfiable: list[str] = []
    runs = [(operation, name, kwargs) for operation in operations for name, kwargs in _variants(operation)]
    for operation, name, kwargs in runs:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy(**kwargs))
        def fuzz(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error], base_url=fault_server.http_url, timeout=30)

        try:
            fuzz()
        except Unsatisfiable:
            unsatisfiable.append(f"{operation.label} ({name})")  # nothing to violate (no parameters or body)
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label} ({name}): {type(exc).__name__}: {str(exc)[:1500]}")
    assert fault_server.is_ready()
    assert len(unsatisfiable) < len(runs) / 2, unsatisfiable
    assert not failures, "\n\n".join(failures)
