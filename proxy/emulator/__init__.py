"""A CPU-only stand-in for a vLLM 0.26.0 OpenAI server with Sleep Mode.

`vllm-switch emulate` accepts `vllm serve`'s command line and answers like the real server:
same routes, status codes, error bodies and SSE framing, requests that hang while asleep, the
level-2 garbage-until-reload trap, and a GPU-memory ledger shared by every emulator that names
the same fake GPU, so a wake into too little memory fails and wedges exactly as on an H100.
"""
