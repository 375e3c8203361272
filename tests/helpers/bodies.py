"""Request bodies the tests send (OpenAI API shapes)."""

from __future__ import annotations

from typing import Any


def chat(model: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    """A chat completion request for `model` with one short user message."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": max_tokens,
        **extra,
    }
