"""The routes the proxy forwards to vLLM: one table, read by the router, the auth middleware,
the OpenAPI document and the README's endpoint list (tests/proxy/test_route_table.py keeps the
README in step).

Each route says where its `model` is (`json`: the JSON body's `model` field; `form`: a
multipart/form-data field named `model`) and whether a request needs its model awake
(`switch`): vLLM's front end answers the tokenizer routes even while its engine sleeps, so
those skip the switch. `kinds` are the vLLM 0.26 model kinds that serve the route (a backend of
another kind answers 404 itself, as vLLM does). Stateless: fixed at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["generate", "pooling", "asr"]
GENERATE: tuple[Kind, ...] = ("generate",)
POOLING: tuple[Kind, ...] = ("pooling",)


@dataclass(frozen=True)
class Route:
    path: str
    body: Literal["json", "form"] = "json"
    switch: bool = True  # False: answered by vLLM's front end, asleep or not
    kinds: tuple[Kind, ...] = GENERATE
    summary: str = ""


ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", summary="OpenAI chat completions (streaming too)"),
    Route("/v1/completions", summary="OpenAI completions (streaming too)"),
    Route("/v1/responses", summary="OpenAI Responses API"),
    Route("/v1/messages", summary="Anthropic Messages API (streaming too)"),
    Route("/v1/messages/count_tokens", switch=False, summary="Anthropic token count"),
    Route("/v1/embeddings", kinds=POOLING, summary="OpenAI embeddings"),
    Route("/v2/embed", kinds=POOLING, summary="Cohere-style embeddings"),
    Route("/pooling", kinds=POOLING, summary="raw pooled outputs"),
    Route("/classify", kinds=POOLING, summary="classification"),
    Route("/score", kinds=POOLING, summary="pairwise scores"),
    Route("/v1/score", kinds=POOLING, summary="pairwise scores"),
    Route("/rerank", kinds=POOLING, summary="Jina/Cohere-style rerank"),
    Route("/v1/rerank", kinds=POOLING, summary="Jina/Cohere-style rerank"),
    Route("/v2/rerank", kinds=POOLING, summary="Cohere v2 rerank"),
    Route(
        "/v1/audio/transcriptions",
        body="form",
        kinds=("asr",),
        summary="speech to text (multipart form, `model` a form field)",
    ),
    Route(
        "/v1/audio/translations",
        body="form",
        kinds=("asr",),
        summary="speech to English text (multipart form)",
    ),
    Route("/tokenize", switch=False, kinds=("generate", "pooling"), summary="tokenize"),
    Route("/detokenize", switch=False, kinds=("generate", "pooling"), summary="detokenize"),
)
BY_PATH = {r.path: r for r in ROUTES}
# what the auth middleware guards with the client keys: every forwarded route, and /v1/*
CLIENT_PATHS = tuple(sorted({"/v1/", *(r.path for r in ROUTES if not r.path.startswith("/v1/"))}))
