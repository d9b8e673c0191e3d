"""Server settings: flags override ``TRAINPILOT_*`` environment variables, which override defaults.

>>> Settings(data_dir="/tmp/tp").store_url
'sqlite:////tmp/tp/trainpilot.db'
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any

from trainpilot.exceptions import ConfigError
from trainpilot.extras import check

DEFAULT_PORT = 8765
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: str = "./trainpilot-data"
    store: str = ""  # store URL; empty means SQLite in data_dir
    broker: str = "memory://"
    token: str | None = field(default=None, repr=False)  # the write token (it also reads)
    read_token: str | None = field(default=None, repr=False)  # a read-only token, for viewers
    cors_origins: str = ""  # comma-separated origins allowed to call the API from a browser; "" = none
    allowed_hosts: str = ""  # comma-separated names the server answers to besides loopback and its address
    log_level: str = "info"
    ring_size: int = 16384
    heartbeat_s: float = 15.0
    stall_timeout_s: float = 30.0  # a subscriber whose socket takes nothing for this long is dropped
    run_timeout_s: float = 60.0  # a live run not heard from for this long is marked lost
    max_body_bytes: int = 32 * 2**20
    llm_url: str = ""  # an OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1 (Ollama)
    llm_model: str = ""
    llm_key: str | None = field(default=None, repr=False)

    @property
    def store_url(self) -> str:
        if self.store:
            return self.store
        path = os.path.join(os.path.abspath(self.data_dir), "trainpilot.db")
        return "sqlite:///" + path

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def check(self) -> Settings:
        """Refuse settings that cannot work or are unsafe, with a message saying how to fix them."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"refusing to listen on {self.host!r} without a token: anyone who can reach it could "
                "control your training. Set TRAINPILOT_TOKEN=<secret> (or --token), or listen on 127.0.0.1."
            )
        for name, value in (
            ("TRAINPILOT_ALLOWED_HOSTS", self.allowed_hosts),
            ("TRAINPILOT_CORS_ORIGINS", self.cors_origins),
        ):
            if "*" in (item.strip() for item in value.split(",")) and not self.token:
                raise ConfigError(
                    f"refusing {name}=* without a token: every web page you open could then read and "
                    "control your training. List the names, or set TRAINPILOT_TOKEN=<secret> (or --token)."
                )
        if self.broker.split(":", 1)[0] in ("redis", "rediss"):
            check("redis", "redis", "the redis broker")
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``TRAINPILOT_<NAME>`` variables, then the non-None `overrides`."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"TRAINPILOT_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw, f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"TRAINPILOT_{name.upper()} must be a number, got {raw!r}") from None
    return raw


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
