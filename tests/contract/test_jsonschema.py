"""The one model→schema converter, on small models: what the CRDs (OpenAPI v3.0
structural) and the chart (JSON Schema) each get. The committed CRDs and
values.schema.json staying byte-identical is tests/chart/test_schema.py's check."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from switchboard.contract.jsonschema import flatten, json_schema, openapi_schema


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(100, ge=1, description="How many.")


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    inner: Inner = Field(default_factory=Inner, description="Always there.")
    maybe: Inner | None = Field(None, description="Optional.")
    rate: float = Field(1.0, gt=0, alias="ratePerSecond", json_schema_extra={"doc_default": "x"})
    note: str | None = None


def test_openapi_collapses_optionals_and_speaks_openapi_3_0() -> None:
    schema = openapi_schema(Outer)
    assert "$defs" not in schema and "additionalProperties" not in schema
    props = schema["properties"]
    assert props["maybe"] == {
        "type": "object",
        "properties": {
            "size": {"default": 100, "description": "How many.", "minimum": 1, "type": "integer"}
        },
        "description": "Optional.",
    }
    # a nested object that needs nothing defaults to {}, so its fields' defaults apply
    assert props["inner"]["default"] == {}
    assert "default" not in props["maybe"]  # optional: absent, never null
    assert props["ratePerSecond"]["minimum"] == 0 and props["ratePerSecond"]["exclusiveMinimum"]
    assert props["note"] == {"type": "string"}
    assert all("title" not in p for p in props.values())


def test_json_schema_keeps_null_unless_told_and_keeps_refusing_unknown_keys() -> None:
    schema = json_schema(Outer)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["inner"]["additionalProperties"] is False  # inlined $ref
    assert [o.get("type") for o in schema["properties"]["note"]["anyOf"]] == ["string", "null"]
    assert schema["properties"]["rate"]["exclusiveMinimum"] == 0  # JSON Schema's number form
    assert "doc_default" not in schema["properties"]["rate"]
    strict = json_schema(Outer, by_alias=True, nullable=False)
    assert strict["properties"]["note"] == {"type": "string"}
    assert "default" not in strict["properties"]["maybe"]
    assert "ratePerSecond" in strict["properties"]


def test_a_union_a_structural_schema_cannot_say_is_refused() -> None:
    union: dict[str, Any] = {
        "properties": {"x": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}
    }
    with pytest.raises(ValueError, match="cannot express a union"):
        flatten(union, nullable=False, openapi=True)
    kept = flatten(union, nullable=False)  # JSON Schema can
    assert kept["properties"]["x"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]


def test_data_is_not_taken_for_schema() -> None:
    """A default or an enum that holds a key named like a dropped keyword stays whole."""
    schema = {"properties": {"x": {"type": "object", "default": {"title": "kept"}}}}
    assert flatten(schema)["properties"]["x"]["default"] == {"title": "kept"}
