"""The documented output schemas are valid JSON Schemas and describe the real documents.

(tests/test_cli_bench.py validates the files of a real run against them as well.)"""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import pytest

from qwen_sse.bench.metrics import Slo
from qwen_sse.bench.schema import (
    COMPARISON_SCHEMA,
    CSV_COLUMNS,
    RECORD_SCHEMA,
    REPEAT_SCHEMA,
    SUMMARY_SCHEMA,
    SWEEP_SCHEMA,
    SWEEP_SCHEMA_ID,
)
from tests.bench_documents import made_up_result


def validate_sweep(document: dict[str, Any]) -> None:
    jsonschema.validate(document, SWEEP_SCHEMA)


@pytest.mark.parametrize(
    "schema", [SUMMARY_SCHEMA, RECORD_SCHEMA, SWEEP_SCHEMA, REPEAT_SCHEMA, COMPARISON_SCHEMA]
)
def test_the_schemas_are_valid(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    "result",
    [
        made_up_result(),
        made_up_result(lag_ms=40, open_loop=True, slo=Slo(ttft_ms=100, e2el_ms=900)),
        made_up_result(requests=2, failed=2),
    ],
)
def test_summaries_and_records_validate(result: Any) -> None:
    jsonschema.validate(result.summary, SUMMARY_SCHEMA)
    for record in result.records:
        jsonschema.validate(msgspec.to_builtins(record), RECORD_SCHEMA)


def test_the_schema_catches_drift() -> None:
    summary = made_up_result().summary
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**summary, "unexpected_key": 1}, SUMMARY_SCHEMA)
    missing = dict(summary)
    del missing["p99_ttft_ms"], missing["mean_itl_ms"]
    with pytest.raises(jsonschema.ValidationError, match="mean_itl_ms"):
        jsonschema.validate(missing, SUMMARY_SCHEMA)
    record = msgspec.to_builtins(made_up_result().records[0])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**record, "output_tokens_source": "guess"}, RECORD_SCHEMA)


def test_a_sweep_document_validates() -> None:
    run = made_up_result().summary
    validate_sweep(
        {
            "schema": SWEEP_SCHEMA_ID,
            "kind": "concurrency",
            "levels": [1, 2],
            "runs": [run, run],
            "saturated_at": 2,
            "stop_reason": "no gain",
        }
    )
    with pytest.raises(jsonschema.ValidationError):
        validate_sweep(
            {
                "schema": SWEEP_SCHEMA_ID,
                "kind": "rates",
                "levels": [1],
                "runs": [{"not": "a summary"}],
                "saturated_at": None,
                "stop_reason": None,
            }
        )


def test_the_csv_columns_are_the_record_fields_with_itl_summarised() -> None:
    fields = set(RECORD_SCHEMA["properties"]) - {"itl_s"}
    assert set(CSV_COLUMNS) == fields | {"itl_count", "itl_mean_s", "itl_max_s"}
