"""Fake log-probabilities in vLLM 0.26.0's chat and completion shapes. No state.

Values are deterministic per (token, position): the sampled token is always rank 1 (the
greedy choice), alternatives follow with strictly lower log-probabilities, every value <= 0.
They are shapes for clients to parse, not a model's numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from proxy.emulator.engine_request import Output
from proxy.emulator.tokenizer import FakeTokenizer

MAX_LOGPROBS = 20  # vLLM's --max-logprobs default


def _fraction(*parts: object) -> float:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest) / 2**32


def _ranked(tok: FakeTokenizer, out: Output, position: int, k: int) -> list[tuple[str, float]]:
    """(token text, logprob) of the sampled token and k-1 alternatives, best first."""
    sampled = out.token_id if out.token_id is not None else 0
    first = -round(0.05 + 0.9 * _fraction(sampled, position), 4)
    ranked = [(out.text, first)]
    for rank in range(1, k):
        alt = 4 + int(_fraction(sampled, position, rank) * (tok.vocab_size - 4))
        value = round(first - rank * 1.5 - _fraction(alt, rank), 4)
        ranked.append((tok.piece(alt), value))
    return ranked


def _entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(
    tok: FakeTokenizer, outputs: Sequence[Output], start: int, top: int
) -> dict[str, Any]:
    """`choices[].logprobs` of chat: one content entry per token that has text or an id."""
    content = []
    for i, out in enumerate(o for o in outputs if o.token_id is not None):
        ranked = _ranked(tok, out, start + i, max(1, top))
        content.append({**_entry(*ranked[0]), "top_logprobs": [_entry(*r) for r in ranked[:top]]})
    return {"content": content}


def completion_logprobs(
    tok: FakeTokenizer, outputs: Sequence[Output], start: int, top: int, offset: int
) -> dict[str, Any]:
    """`choices[].logprobs` of completions: parallel lists; `offset` is the text offset of the
    first token (the length of the text already sent)."""
    offsets: list[int] = []
    token_logprobs: list[float] = []
    tokens: list[str] = []
    tops: list[dict[str, float]] = []
    for i, out in enumerate(o for o in outputs if o.token_id is not None):
        ranked = _ranked(tok, out, start + i, max(1, top))
        offsets.append(offset)
        offset += len(out.text)
        tokens.append(ranked[0][0])
        token_logprobs.append(ranked[0][1])
        tops.append(dict(ranked[: max(1, top)]))
    return {
        "text_offset": offsets,
        "token_logprobs": token_logprobs,
        "tokens": tokens,
        "top_logprobs": tops,
    }
