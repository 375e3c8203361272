"""A deterministic fake tokenizer and "model": same prompt + seed, same text.

The vocabulary is a fixed list of word pieces; ids 0-2 are the chat special tokens. Output
tokens are drawn from a PRNG seeded by the prompt's ids and the request seed, so a greedy
request before and after a sleep/wake cycle yields identical text - unless the weights are
invalid (level-2 sleep woken without `reload_weights`), in which case every token is "!",
the garbage real vLLM produces in that state.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
GARBAGE = "!"
_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "to",
    "vi",
    "ze",
    "an",
    "el",
    "or",
    "um",
    "is",
    "et",
    "bra",
    "cle",
    "dro",
    "fen",
    "gal",
    "hum",
    "jor",
    "kel",
    "mon",
    "nar",
    "pol",
    "quin",
    "ster",
)
_PIECE = re.compile(r"<\|[a-z_]+\|>|\s*[A-Za-z]+|\s*\d|\s*[^\sA-Za-z\d]|\s+")


def _word(i: int) -> str:
    out = []
    n = i
    while True:
        out.append(_SYLLABLES[n % len(_SYLLABLES)])
        n //= len(_SYLLABLES)
        if n == 0:
            break
    return " " + "".join(out)


class FakeTokenizer:
    """Text <-> ids over a fixed `vocab_size`-entry vocabulary."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._vocab = [*SPECIALS, GARBAGE] + [
            _word(i) for i in range(vocab_size - len(SPECIALS) - 1)
        ]
        self._index = {piece: i for i, piece in enumerate(self._vocab)}

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _PIECE.findall(text):
            known = self._index.get(piece)
            if known is None:
                digest = hashlib.blake2b(
                    piece.encode("utf-8", "surrogatepass"), digest_size=4
                ).digest()
                known = (
                    len(SPECIALS)
                    + 1
                    + int.from_bytes(digest) % (self.vocab_size - len(SPECIALS) - 1)
                )
            ids.append(known)
        return ids

    def split(self, text: str) -> list[tuple[int, str]]:
        """`text` as (token id, exact text) steps whose texts join back to `text`."""
        return [(self.encode(piece)[0], piece) for piece in _PIECE.findall(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._vocab[i] if 0 <= i < self.vocab_size else "" for i in ids)

    def piece(self, token_id: int) -> str:
        return self._vocab[token_id]

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """ChatML, as the Qwen3 template renders it (with the generation prompt)."""
        parts = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            parts.append(f"<|im_start|>{m.get('role', 'user')}\n{content or ''}<|im_end|>\n")
        return "".join(parts) + "<|im_start|>assistant\n"


class FakeModel:
    """Chooses output tokens; `natural_length` is where it would emit EOS."""

    def __init__(self, tokenizer: FakeTokenizer) -> None:
        self._tok = tokenizer
        self._first_word = len(SPECIALS) + 1

    def stream(self, prompt_ids: Sequence[int], seed: int | None) -> tuple[random.Random, int]:
        digest = hashlib.blake2b(
            repr((tuple(prompt_ids), seed or 0)).encode(), digest_size=8
        ).digest()
        rng = random.Random(int.from_bytes(digest))
        natural_length = 16 + rng.randrange(112)
        return rng, natural_length

    def next_token(self, rng: random.Random, *, weights_valid: bool) -> int:
        token = rng.randrange(self._first_word, self._tok.vocab_size)
        return token if weights_valid else self._first_word - 1
