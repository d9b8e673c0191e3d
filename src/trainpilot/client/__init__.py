"""Talking to a trainpilot server from outside it: the REST client (`client.rest`) and the resuming
Server-Sent-Events reader (`client.sse`). Below `server/`, `sdk/` and `cli/`: it imports only the flat
contract modules."""

from trainpilot.client.rest import ApiClient, auth_headers, env_token, http_error, run_path

__all__ = ["ApiClient", "auth_headers", "env_token", "http_error", "run_path"]
