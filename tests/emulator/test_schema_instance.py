"""The emulator's JSON-schema instances: every one validates; unsupported schemas are refused."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from proxy.emulator.schema_instance import UnsupportedSchemaError, instance_for

SCHEMAS: dict[str, dict[str, Any]] = {
    "object": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "bounds": {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 4},
            "x": {"type": "number", "exclusiveMinimum": 1.5},
            "s": {"type": "string", "minLength": 12, "maxLength": 14},
            "t": {"type": "string", "maxLength": 2},
        },
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 3},
            "pair": {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}]},
            "none": {"type": "array", "maxItems": 0},
        },
    },
    "refs_and_unions": {
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "type": "object",
        "properties": {
            "p": {"$ref": "#/$defs/Point"},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "kind": {"const": "fixed"},
            "either": {"type": ["null", "boolean"]},
            "when": {"type": "string", "format": "date-time"},
            "merged": {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}},
                    {"type": "object", "properties": {"b": {"type": "integer"}}},
                ]
            },
        },
        "required": ["p", "undeclared"],
    },
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_instance_validates(name: str) -> None:
    schema = SCHEMAS[name]
    value = instance_for(schema, words=["alpha", "beta"])
    jsonschema.validate(value, schema)


def test_every_property_is_written() -> None:
    value = instance_for(SCHEMAS["object"])
    assert set(value) == {"city", "days"}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a+$"},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"not": {"type": "string"}},
        {"type": "frobnicate"},
        {"$ref": "https://example.com/schema.json"},
        {"$ref": "#/$defs/Missing"},
        {"type": "integer", "minimum": 5, "maximum": 4},
        {"enum": []},
        "not a schema",
    ],
    ids=repr,
)
def test_unsupported_schema_is_refused(schema: Any) -> None:
    with pytest.raises(UnsupportedSchemaError):
        instance_for(schema)


def test_ref_loop_is_refused() -> None:
    with pytest.raises(UnsupportedSchemaError, match="nests too deeply"):
        instance_for({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"})
