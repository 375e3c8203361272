"""A multi-model pipeline through a running proxy: stage after stage (classify -> caption ->
rerank, each a different model), one request at a time, streaming, as a pipeline that hops
between models does. Stateless: `run_pipelines` returns what it measured.

Per hop: switch-inclusive time to first token, total time, and the proxy's timing headers
(queue, sleep, wake, warm-up); per pipeline: its total. Run as a script against a proxy URL:

    python3 bench/pipeline.py --url http://127.0.0.1:8000 --models classify,caption,rerank \\
        --pipelines 8 --out pipeline.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

PROMPTS = {
    0: "Classify the sentiment of: the wake was fast.",
    1: "Write a caption for a photo of the Moon over the sea.",
    2: "Rerank these: sleep, wake, warm-up, prompt.",
}
HEADERS = ("queue", "sleep", "wake", "warmup")


def hop(http: httpx.Client, url: str, model: str, prompt: str, tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    t0 = time.monotonic()
    first, chunks = None, 0
    with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        status = r.status_code
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks += 1
                if first is None and '"content":"' in line and '"content":""' not in line:
                    first = time.monotonic() - t0
        h = {k: float(r.headers.get(f"x-vllm-switch-{k}-ms", "nan")) / 1000 for k in HEADERS}
    return {
        "model": model,
        "status": status,
        "ttft_s": first,
        "total_s": time.monotonic() - t0,
        "chunks": chunks,
        **{f"{k}_s": v for k, v in h.items()},
    }


def run_pipelines(
    url: str, models: Sequence[str], pipelines: int, tokens: int = 32, prime: int = 1
) -> dict[str, Any]:
    """`prime` untimed pipelines first (every model slept and woken once under this proxy)."""
    runs: list[dict[str, Any]] = []
    with httpx.Client(timeout=600) as http:
        for i in range(prime + pipelines):
            t0 = time.monotonic()
            hops = [hop(http, url, m, PROMPTS[k % 3], tokens) for k, m in enumerate(models)]
            if i >= prime:
                runs.append({"total_s": time.monotonic() - t0, "hops": hops})
    return {"models": list(models), "tokens": tokens, "runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    hops = [h for r in runs for h in r["hops"]]
    ttfts = [h["ttft_s"] for h in hops if h["ttft_s"] is not None]
    out: dict[str, Any] = {
        "pipelines": len(runs),
        "errors": sum(h["status"] != 200 for h in hops),
        "pipeline_p50_s": statistics.median(r["total_s"] for r in runs) if runs else None,
        "hop_ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "hop_ttft_max_s": max(ttfts) if ttfts else None,
    }
    for model in dict.fromkeys(h["model"] for h in hops):
        mine = [h for h in hops if h["model"] == model]
        t = [h["ttft_s"] for h in mine if h["ttft_s"] is not None]
        out[model] = {
            "ttft_p50_s": statistics.median(t) if t else None,
            "wake_p50_s": statistics.median(h["wake_s"] for h in mine),
            "sleep_p50_s": statistics.median(h["sleep_s"] for h in mine),
            "warmup_p50_s": statistics.median(h["warmup_s"] for h in mine),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--models", default="classify,caption,rerank")
    p.add_argument("--pipelines", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    result = run_pipelines(a.url, a.models.split(","), a.pipelines, a.tokens)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
