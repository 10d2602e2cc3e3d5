"""The HTTP gateway: API keys, validation, job submission onto NATS, SSE back to clients.

Errors are HTTP answers (401, 404, 413, 422, 503), never exceptions leaking to clients; a
`bus.BusUnavailableError` becomes a 503 that says nothing was stored.
"""
