"""The routes clients call: OpenAI-compatible (`openai`), operator (`admin`), and the
innermost ASGI fast path (`direct`) for the forwarded routes."""
