"""The HTTP layer: what a client of the proxy talks to.

`routes/` (the OpenAI API, admin and direct routes), `edge/` (the server side of each
connection: the HTTP/1 protocol, its limits and refusals, the listening socket), and the ASGI
middleware and helpers the routes share: auth, header limits, disconnect watching, error
rendering, and forwarding a request to its backend.
"""
