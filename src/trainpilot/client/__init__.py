"""Talking to a trainpilot server from outside it: the Server-Sent-Events reader (`client.sse`)."""
