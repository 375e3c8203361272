"""The upstream client: the proxy's HTTP/1.1 connections to its vLLM backends (`transport`)
and the strict response parser they use (`http1`). Imports nothing else of the proxy."""
