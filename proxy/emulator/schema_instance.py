"""A minimal valid instance of a JSON schema: what the emulator "generates" under a grammar.

vLLM 0.26 constrains decoding with a grammar compiled from `response_format.json_schema` or a
tool's `parameters`, so its output always parses and validates. The emulator has no grammar: it
writes down one small instance of the schema instead and lets the engine emit it token by token.

Supported: `type` (one or a list), `enum`, `const`, `properties` (all of them are written, which
covers `required`), `additionalProperties`, `items`/`prefixItems`, `minItems`, string
`minLength`/`maxLength`, number and integer bounds (`minimum`, `maximum`, `exclusive*`,
`multipleOf` for integers), `anyOf`/`oneOf` (first branch), `allOf` of objects, local `$ref`
(`#/$defs/...`, `#/definitions/...`) and `format` for the common string formats. Anything else
(`pattern`, `not`, `if`/`then`, `patternProperties`, `uniqueItems` ...) raises
`UnsupportedSchemaError`, which the routes answer with a 400 - the emulator refuses rather than
emit something that might not validate. No state.
"""

from __future__ import annotations

import math
from typing import Any

_IGNORED = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "definitions",
        "required",
        "strict",
        "readOnly",
        "writeOnly",
        "deprecated",
        "additionalProperties",
        "maxItems",
        "minProperties",
        "maxProperties",
    }
)
_KNOWN = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "items",
        "prefixItems",
        "minItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "format",
    }
)
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}
_MAX_DEPTH = 32


class UnsupportedSchemaError(ValueError):
    """The schema uses a feature the emulator cannot satisfy, or is not a valid schema."""


def instance_for(schema: Any, *, words: list[str] | None = None) -> Any:
    """One value that validates against `schema`; strings are filled from `words`."""
    return _Builder(schema, words or ["text"]).build(schema, 0)


class _Builder:
    def __init__(self, root: Any, words: list[str]) -> None:
        self._root = root
        self._words = words
        self._next = 0

    def _word(self) -> str:
        word = self._words[self._next % len(self._words)]
        self._next += 1
        return word

    def build(self, schema: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise UnsupportedSchemaError("the JSON schema nests too deeply (or $ref loops)")
        if schema is True or schema == {}:
            return self._word()
        if not isinstance(schema, dict):
            raise UnsupportedSchemaError(f"a JSON schema must be an object, got {schema!r}")
        unknown = sorted(set(schema) - _KNOWN - _IGNORED)
        if unknown:
            raise UnsupportedSchemaError(
                f"the JSON schema uses {', '.join(unknown)}, which the vllm-switch emulator "
                "cannot satisfy"
            )
        if "$ref" in schema:
            return self.build(self._resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise UnsupportedSchemaError("`enum` must be a non-empty array")
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = schema[key]
                if not isinstance(branches, list) or not branches:
                    raise UnsupportedSchemaError(f"`{key}` must be a non-empty array")
                return self.build(branches[0], depth + 1)
        if "allOf" in schema:
            return self._all_of(schema, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null") if kind else None
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        return self._typed(kind, schema, depth)

    def _typed(self, kind: Any, schema: dict[str, Any], depth: int) -> Any:
        if kind == "object":
            props = schema.get("properties", {})
            if not isinstance(props, dict):
                raise UnsupportedSchemaError("`properties` must be an object")
            out = {name: self.build(sub, depth + 1) for name, sub in props.items()}
            for name in schema.get("required", []):
                out.setdefault(name, self._word())  # required but not described: any value
            return out
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        raise UnsupportedSchemaError(f"unknown JSON schema type {kind!r}")

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", {})
        count = max(int(schema.get("minItems", 1)), len(prefix))
        if schema.get("maxItems") is not None:
            count = min(count, int(schema["maxItems"]))
        out = [self.build(sub, depth + 1) for sub in prefix[:count]]
        while len(out) < count:
            if items is False:
                raise UnsupportedSchemaError("`items: false` conflicts with `minItems`")
            out.append(self.build(items, depth + 1))
        return out

    def _string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        text = _FORMATS.get(fmt, "") if isinstance(fmt, str) else ""
        if fmt is not None and not text:
            raise UnsupportedSchemaError(f"string format {fmt!r} is not supported by the emulator")
        text = text or self._word()
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        if high is not None and int(high) < low:
            raise UnsupportedSchemaError("`maxLength` is below `minLength`")
        while len(text) < low:
            text += "x"
        if high is not None:
            if fmt is not None and len(text) > int(high):
                raise UnsupportedSchemaError("`maxLength` is too small for the string's `format`")
            text = text[: int(high)]
        return text

    def _all_of(self, schema: dict[str, Any], depth: int) -> Any:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = self.build(part, depth + 1)
            if not isinstance(value, dict):
                raise UnsupportedSchemaError("`allOf` is supported for objects only")
            merged.update(value)
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        if rest.get("properties"):
            merged.update(self.build(rest, depth + 1))
        return merged

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise UnsupportedSchemaError(f"only local $ref are supported, got {ref!r}")
        node = self._root
        for part in ref[2:].split("/"):
            if not isinstance(node, dict) or part not in node:
                raise UnsupportedSchemaError(f"$ref {ref!r} does not resolve")
            node = node[part]
        return node


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    ex_low = schema.get("exclusiveMinimum")
    ex_high = schema.get("exclusiveMaximum")
    step = 1 if ex_low is not None and integer else 0.5
    value: float = 0
    if low is not None:
        value = float(low)
    if ex_low is not None and value <= float(ex_low):
        value = float(ex_low) + step
    if integer:
        value = math.ceil(value)
        multiple = schema.get("multipleOf")
        if multiple:
            value = math.ceil(value / multiple) * multiple
    upper_ok = (high is None or value <= float(high)) and (
        ex_high is None or value < float(ex_high)
    )
    if not upper_ok:
        raise UnsupportedSchemaError("the number bounds of the JSON schema leave no value")
    return int(value) if integer else value
