"""The HTTP/WebSocket service: settings, per-model workers, routes, metrics."""
