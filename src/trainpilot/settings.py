"""Server settings: flags override ``TRAINPILOT_*`` environment variables, which override defaults.

>>> Settings(data_dir="/tmp/tp").store_url
'sqlite:////tmp/tp/trainpilot.db'
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit

from trainpilot.exceptions import ConfigError
from trainpilot.extras import check

DEFAULT_PORT = 8765
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ALERT_SEVERITIES = ("warning", "critical")
WebhookFormat = Literal["json", "slack", "discord"]
WEBHOOK_FLAG = "--alert-webhook (TRAINPILOT_ALERT_WEBHOOKS)"
FORMATS: dict[str, WebhookFormat] = {"json": "json", "slack": "slack", "discord": "discord"}
DISCORD_HOSTS = frozenset({"discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com"})


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
    analysis: str = "process"  # where the live detectors run: "process" (their own) or "inline"
    max_body_bytes: int = 32 * 2**20
    llm_url: str = ""  # an OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1 (Ollama)
    llm_model: str = ""
    llm_key: str | None = field(default=None, repr=False)
    llm_model_path: str = ""  # a GGUF file the server runs itself (--llm-model), when llm_url is not set
    llm_threads: int = 0  # the local model's CPU threads; 0: half the cores
    llm_ctx: int = 4096  # the local model's context, in tokens: the prompt and the answer
    llm_max_tokens: int = 400  # the longest answer, in tokens
    public_url: str = ""  # the dashboard's address as people open it (behind a proxy), for alert links
    alert_webhooks: str = field(default="", repr=False)  # URLs, comma- or space-separated: secrets
    alert_severity: str = "warning"  # the least severe finding that alerts: warning | critical
    alert_backoff_s: float = 1.0  # a failed delivery is retried after this, then twice and four times it
    alert_burst: int = 10  # alerts a webhook may get at once ...
    alert_refill_s: float = 6.0  # ... and then one per this many seconds

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

    @property
    def dashboard_url(self) -> str | None:
        """Where people open the dashboard: `public_url`, else the listen address unless that is every
        address (0.0.0.0 names no machine a reader could open)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return None if self.host in ("0.0.0.0", "::", "") else self.url

    @property
    def webhooks(self) -> list[Webhook]:
        """`alert_webhooks`, parsed; `ConfigError` names the flag for one that is not http(s)."""
        return [parse_webhook(raw) for raw in re.split(r"[\s,]+", self.alert_webhooks) if raw]

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
        if self.analysis not in ("process", "inline"):
            raise ConfigError(f"TRAINPILOT_ANALYSIS must be process or inline, got {self.analysis!r}")
        if self.alert_severity not in ALERT_SEVERITIES:
            raise ConfigError(
                f"--alert-severity (TRAINPILOT_ALERT_SEVERITY) must be warning or critical, "
                f"got {self.alert_severity!r}"
            )
        if self.alert_backoff_s < 0 or self.alert_burst < 1 or self.alert_refill_s <= 0:
            raise ConfigError(
                "alert rate settings: TRAINPILOT_ALERT_BACKOFF_S must be >= 0, TRAINPILOT_ALERT_BURST "
                ">= 1 and TRAINPILOT_ALERT_REFILL_S > 0"
            )
        if self.llm_threads < 0 or self.llm_ctx < 512 or self.llm_max_tokens < 16:
            raise ConfigError(
                "local LLM settings: --llm-threads (TRAINPILOT_LLM_THREADS) must be >= 0, --llm-ctx "
                "(TRAINPILOT_LLM_CTX) >= 512 and --llm-max-tokens (TRAINPILOT_LLM_MAX_TOKENS) >= 16"
            )
        self.webhooks  # noqa: B018 (parsing is the check)
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


@dataclass(frozen=True)
class Webhook:
    """Where alerts go and in which body: a generic JSON object, Slack's `text` or Discord's `content`."""

    url: str = field(repr=False)  # the path holds the webhook's token: never shown, never logged
    format: WebhookFormat

    @property
    def redacted(self) -> str:
        """Scheme and host only, for /api/system/info, /metrics and the log."""
        parts = urlsplit(self.url)
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def parse_webhook(raw: str) -> Webhook:
    """A webhook URL, its body format forced by a prefix or told by its host.

    >>> parse_webhook("https://hooks.slack.com/services/T/B/x").format
    'slack'
    >>> parse_webhook("json+https://hooks.slack.com/services/T/B/x").format
    'json'
    """
    prefix, plus, rest = raw.partition("+")
    forced = FORMATS.get(prefix) if plus else None
    url = raw if forced is None else rest
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = url.split("://", 1)[0] + "://..." if "://" in url else "a URL without a scheme"
        raise ConfigError(
            f"{WEBHOOK_FLAG}: {shown} is not an http(s) URL with a host "
            "(a slack+, discord+ or json+ prefix may force the body format)"
        )
    if forced is not None:
        kind = forced
    elif parts.hostname == "hooks.slack.com":
        kind = "slack"
    elif parts.hostname in DISCORD_HOSTS and parts.path.startswith("/api/webhooks/"):
        kind = "discord"
    else:
        kind = "json"
    return Webhook(url, kind)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
