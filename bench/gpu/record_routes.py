"""Record what vLLM 0.26.0 answers on the routes beyond the first transcripts (GPU host).

    python3 bench/gpu/record_routes.py --dev URL --pooling URL --tools URL --out FILE

Three servers of the random-weight conformance checkpoint (bench/gpu/conformance.sh starts
them): `dev` serves it as `tiny tiny-alias` (dev mode, Sleep Mode), `pooling` as `tiny-embed`
(`--runner pooling --convert embed`), `tools` as `tiny-tools` (`--enable-auto-tool-choice
--tool-call-parser hermes`), all with `--max-model-len 512`. A fixed list of requests is sent,
one connection each, in order; the answers are written as a JSON list of
`{"server", "check", "req": {"method", "path", "json"?}, "status", "headers", "body",
"seconds"}` entries, the shape of tests/conformance/data/vllm026-transcripts.json plus the server
it went to and how tests/conformance/test_routes_transcripts.py compares the replay ("exact",
"shape" or "status": see tests/conformance/compare.py). Only stdlib and httpx, so it runs with
the GPU host's python3 from the repository root. Nothing here is kept between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
MOON = [{"role": "user", "content": "Give me a fun fact about the Moon."}]
MESSAGE = {"model": "tiny", "max_tokens": 5, "messages": MOON}
DOCS = ["The Moon orbits the Earth.", "Paris is in France.", "Cats purr."]


def chat(model: str = "tiny", max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MOON,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


def post(server: str, check: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"server": server, "check": check, "req": {"method": "POST", "path": path, "json": body}}


def get(server: str, check: str, path: str) -> dict[str, Any]:
    return {"server": server, "check": check, "req": {"method": "GET", "path": path}}


def requests() -> list[dict[str, Any]]:
    """The fixed list, in the order sent. `check` says what of the answer is weight-free."""
    grammar = {"ignore_eos": False, "max_tokens": 64}
    completion = {"model": "tiny", "prompt": "The Moon", "max_tokens": 4, "temperature": 0}
    embed = {"model": "tiny-embed"}
    return [
        # dev: the generate model
        post("dev", "shape", "/v1/messages", MESSAGE),
        post("dev", "shape", "/v1/messages", {**MESSAGE, "stream": True}),
        post("dev", "shape", "/v1/messages/count_tokens", {"model": "tiny", "messages": MOON}),
        post("dev", "exact", "/v1/messages", {**MESSAGE, "model": "nope"}),
        post("dev", "exact", "/v1/messages", {"messages": []}),
        post("dev", "exact", "/v1/chat/completions", chat(n=2, temperature=1.0, seed=7)),
        post("dev", "shape", "/v1/chat/completions", chat(logprobs=True, top_logprobs=2)),
        post("dev", "shape", "/v1/completions", {**completion, "ignore_eos": True, "logprobs": 2}),
        post(
            "dev",
            "shape",
            "/v1/chat/completions",
            chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "fact", "schema": SCHEMA},
                },
                **grammar,
            ),
        ),
        post(
            "dev", "shape", "/v1/chat/completions", chat(tools=[TOOL], tool_choice=NAMED, **grammar)
        ),
        post("dev", "exact", "/v1/chat/completions", chat(tools=[TOOL], tool_choice="auto")),
        post("dev", "exact", "/v1/chat/completions", chat(top_logprobs=2)),
        post("dev", "exact", "/v1/chat/completions", chat(n=0)),
        post("dev", "exact", "/v1/chat/completions", chat(tool_choice="required")),
        get("dev", "exact", "/v1/models/tiny"),
        get("dev", "exact", "/v1/models/nope"),
        post("dev", "exact", "/pooling", {"model": "tiny", "input": "x"}),
        post("dev", "exact", "/v1/embeddings", {"model": "tiny", "input": "x"}),
        # tools: the generate model with automatic tool choice (hermes)
        post("tools", "status", "/v1/chat/completions", chat("tiny-tools", 16, tools=[TOOL])),
        post(
            "tools",
            "status",
            "/v1/chat/completions",
            chat("tiny-tools", 16, tools=[TOOL], tool_choice="auto", stream=True),
        ),
        post(
            "tools",
            "shape",
            "/v1/chat/completions",
            chat("tiny-tools", tools=[TOOL], tool_choice="required", **grammar),
        ),
        post(
            "tools",
            "shape",
            "/v1/chat/completions",
            chat("tiny-tools", tools=[TOOL], tool_choice=NAMED, **grammar),
        ),
        # pooling: the embedding model
        get("pooling", "shape", "/v1/models"),
        post("pooling", "shape", "/v1/embeddings", {**embed, "input": "Give me a fun fact."}),
        post("pooling", "shape", "/v1/embeddings", {**embed, "input": ["a", "b c"]}),
        post("pooling", "shape", "/v1/embeddings", {**embed, "input": [5, 6, 7, 8]}),
        post(
            "pooling",
            "shape",
            "/v1/embeddings",
            {**embed, "input": "x", "encoding_format": "base64"},
        ),
        post("pooling", "exact", "/v1/embeddings", {**embed, "input": "x", "dimensions": 8}),
        post("pooling", "exact", "/v1/embeddings", {"model": "nope", "input": "x"}),
        post("pooling", "exact", "/v1/embeddings", embed),
        post("pooling", "shape", "/pooling", {**embed, "input": ["a b", "c"]}),
        post("pooling", "shape", "/score", {**embed, "text_1": "The Moon", "text_2": DOCS}),
        post(
            "pooling", "shape", "/v1/score", {**embed, "text_1": ["a", "b"], "text_2": ["c", "d"]}
        ),
        post("pooling", "shape", "/rerank", {**embed, "query": "The Moon", "documents": DOCS}),
        post("pooling", "shape", "/v1/rerank", {**embed, "query": "The Moon", "documents": DOCS}),
        post(
            "pooling",
            "shape",
            "/v2/rerank",
            {**embed, "query": "The Moon", "documents": DOCS, "top_n": 2},
        ),
        post("pooling", "exact", "/v1/rerank", {**embed, "query": "x"}),
        post("pooling", "exact", "/v1/chat/completions", chat("tiny-embed")),
        post("pooling", "exact", "/v1/completions", {**completion, "model": "tiny-embed"}),
        get("pooling", "exact", "/v1/models/tiny-embed"),
    ]


def send(base: str, req: dict[str, Any]) -> tuple[int, dict[str, str], str, float]:
    """One request on its own connection; status, headers (less `date`), body, seconds."""
    with httpx.Client(base_url=base, timeout=120) as client:
        t0 = time.monotonic()
        r = client.request(req["method"], req["path"], json=req.get("json"))
        seconds = round(time.monotonic() - t0, 4)
    headers = {k: v for k, v in r.headers.items() if k.lower() != "date"}
    return r.status_code, headers, r.text, seconds


def record(urls: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for entry in requests():
        status, headers, body, seconds = send(urls[entry["server"]], entry["req"])
        out.append(
            {**entry, "status": status, "headers": headers, "body": body, "seconds": seconds}
        )
        req = entry["req"]
        print(f"{entry['server']:8} {req['method']:4} {req['path']:28} {status}", file=sys.stderr)  # noqa: T201
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dev", required=True, help="the generate model, dev mode (tiny)")
    p.add_argument("--pooling", required=True, help="the embedding model (tiny-embed)")
    p.add_argument("--tools", required=True, help="auto tool choice, hermes (tiny-tools)")
    p.add_argument("--out", required=True, type=Path)
    ns = p.parse_args(argv)
    urls = {"dev": ns.dev, "pooling": ns.pooling, "tools": ns.tools}
    entries = record({k: v.rstrip("/") for k, v in urls.items()})
    ns.out.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(entries)} entries -> {ns.out}", file=sys.stderr)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
