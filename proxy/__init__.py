"""vllm-switch: one OpenAI-compatible endpoint for several vLLM models on one GPU."""

__version__ = "0.1.0"
