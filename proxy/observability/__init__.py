"""Observability: Prometheus metrics, the per-request record, log formatting, and the
`vllm-switch status` view."""
