"""What /openapi.json says about the API: request bodies and the errors the proxy produces.

The routes read raw bodies (so every field a client sends reaches vLLM untouched, and
streams are not re-encoded); these schemas only *document* the fields the proxy itself looks
at plus the common ones, with extra fields allowed. `document()` adds the configured model
names as the `model` enum, so clients (and the schemathesis fuzz test) see what is served.
Stateless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
# vLLM answers the Anthropic routes' errors in Anthropic's shape; the proxy's own stay OpenAI's
ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_EITHER_ERROR = {
    "application/json": {
        "schema": {
            "oneOf": [
                {"$ref": "#/components/schemas/Error"},
                {"$ref": "#/components/schemas/AnthropicError"},
            ]
        }
    }
}
ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
_ERRORS = {
    "400": "Malformed request: bad JSON, missing or oversized `model`, too deeply nested",
    "401": "Missing or wrong API key (when `auth.api_keys` is set)",
    "404": "Unknown model, or no such route",
    "409": "The model's state does not allow this action (an operator's control)",
    "413": "Body larger than `limits.max_body_bytes`",
    "429": "Too many requests already wait for this model (Retry-After)",
    "431": "Request line plus headers larger than `limits.max_header_bytes`",
    "502": "The backend could not be reached",
    "503": "The model could not be made ready, or waited too long (Retry-After)",
    "504": "The backend timed out",
}
_MODEL = {"type": "string", "minLength": 1, "description": "a configured model name or alias"}
_TEXT_OR_TEXTS = {
    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]
}
_MESSAGES = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "user", "assistant"]},
            "content": {"type": "string"},
        },
    },
}
_LIMITS = {  # nullable, as in vLLM's request models
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0},
    "stream": {"type": ["boolean", "null"]},
}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": _MODEL, "messages": _MESSAGES, **_LIMITS},
    "/v1/completions": {"model": _MODEL, "prompt": _TEXT_OR_TEXTS, **_LIMITS},
    "/v1/embeddings": {"model": _MODEL, "input": _TEXT_OR_TEXTS},
    "/v1/responses": {"model": _MODEL, "input": {"type": "string"}},
    "/v1/messages": {
        "model": _MODEL,
        "messages": _MESSAGES,
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": ["boolean", "null"]},
    },
    "/v1/messages/count_tokens": {"model": _MODEL, "messages": _MESSAGES},
    "/v2/embed": {"model": _MODEL, "texts": {"type": "array", "items": {"type": "string"}}},
    "/pooling": {"model": _MODEL, "input": _TEXT_OR_TEXTS},
    "/classify": {"model": _MODEL, "input": _TEXT_OR_TEXTS},
    **{
        key: {"model": _MODEL, "text_1": _TEXT_OR_TEXTS, "text_2": _TEXT_OR_TEXTS}
        for key in ("/score", "/v1/score")
    },
    **{
        key: {
            "model": _MODEL,
            "query": {"type": "string"},
            "documents": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "top_n": {"type": "integer", "minimum": 1},
        }
        for key in ("/rerank", "/v1/rerank", "/v2/rerank")
    },
    "/tokenize": {"model": _MODEL, "prompt": {"type": "string"}},
    "/detokenize": {
        "model": _MODEL,
        "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    },
}
# multipart/form-data bodies: `model` is a form field
FORMS: dict[str, dict[str, Any]] = {
    key: {
        "model": _MODEL,
        "file": {"type": "string", "format": "binary"},
        "language": {"type": "string"},
        "response_format": {"enum": ["json", "text", "srt", "verbose_json", "vtt"]},
        "stream": {"type": "boolean"},
    }
    for key in ("/v1/audio/transcriptions", "/v1/audio/translations")
}
_REQUIRED = {
    "/v1/chat/completions": ["model", "messages"],
    "/v1/completions": ["model", "prompt"],
    "/v1/embeddings": ["model", "input"],
    "/v1/responses": ["model", "input"],
    "/tokenize": ["model", "prompt"],
    "/detokenize": ["model", "tokens"],
    "/v1/messages": ["model", "messages", "max_tokens"],
    "/v1/messages/count_tokens": ["model", "messages"],
    "/v2/embed": ["model", "texts"],
    "/pooling": ["model", "input"],
    "/classify": ["model", "input"],
    "/score": ["model", "text_1", "text_2"],
    "/v1/score": ["model", "text_1", "text_2"],
    **{key: ["model", "query", "documents"] for key in ("/rerank", "/v1/rerank", "/v2/rerank")},
    **{key: ["model", "file"] for key in ("/v1/audio/transcriptions", "/v1/audio/translations")},
}


def body(path: str) -> dict[str, Any]:
    """`openapi_extra` for a forwarding route: its request body and the proxy's errors."""
    form = path in FORMS
    props = FORMS[path] if form else BODIES[path]
    schema = {"type": "object", "required": _REQUIRED[path], "properties": props}
    kind = "multipart/form-data" if form else "application/json"
    return {
        "requestBody": {"required": True, "content": {kind: {"schema": schema}}},
        "responses": {
            "200": {
                "description": "The backend's answer, passed through (SSE when `stream` is true)",
                "content": {"application/json": {"schema": {}}, "text/event-stream": {}},
            },
            **{
                code: {
                    "description": why,
                    "content": _EITHER_ERROR if path in ANTHROPIC_PATHS else _ERROR_CONTENT,
                }
                for code, why in _ERRORS.items()
            },
        },
    }


def errors(*codes: str) -> dict[int | str, dict[str, Any]]:
    """`responses` for a route the proxy answers itself: these error statuses, documented."""
    return {code: {"description": _ERRORS[code], "content": _ERROR_CONTENT} for code in codes}


def document(
    spec: dict[str, Any], models: Sequence[str], keyed_paths: Sequence[str] = ()
) -> dict[str, Any]:
    """The generated OpenAPI document with the Error schema, the served model names, and a
    Bearer security scheme on `keyed_paths` (those that need an API key in this config)."""
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR
    components["schemas"]["AnthropicError"] = ANTHROPIC_ERROR
    for path in (*BODIES, *FORMS):
        op = spec["paths"][path]["post"]
        kind = "multipart/form-data" if path in FORMS else "application/json"
        schema = op["requestBody"]["content"][kind]["schema"]
        schema["properties"]["model"] = {**_MODEL, "enum": list(models)}
    if keyed_paths:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path in keyed_paths:
        for op in spec["paths"][path].values():
            op["security"] = [{"bearer": []}]
            op["responses"].setdefault(
                "401", {"description": _ERRORS["401"], "content": _ERROR_CONTENT}
            )
    return spec
