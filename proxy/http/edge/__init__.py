"""The server side of each inbound connection: the HTTP/1 protocol (a uvicorn subclass), what
it refuses and how (`refusals`), the open-file limit and connection cap, the listening socket."""
