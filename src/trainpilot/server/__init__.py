"""The server layer: REST, SSE and WebSocket over one Hub (store + broker)."""
