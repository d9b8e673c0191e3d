"""Alerts that reach people: a finding of the chosen severity or above, or a run that ends `failed`,
`stopped` or `lost`, posted to webhooks as a generic JSON object, Slack's `{"text"}` or Discord's
`{"content"}`.

The store's commit listener (app.py) hands every committed batch to `Alerts.observe` right after the
broker's publish. There a kind check passes metrics by at once, one dict lookup deduplicates per
(run, detector), and what is left goes on a bounded queue with `put_nowait`: ingest never awaits a
receiver, and a full queue drops (and counts) rather than grows. One task (`_route`) looks each
alert's run up and offers it to every webhook's own bounded queue; each webhook's task sends its
alerts in order, through a token bucket, retried with backoff. A slow or dead receiver therefore
costs its own queue, never ingest, the store or another webhook.

>>> render("slack", Alert("finding", "r-1", 7, 0.0, 3, "nan_inf", "critical", None, "NaN in loss"))
{'text': 'trainpilot [critical] nan_inf in run r-1 at step 3: NaN in loss'}
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson

from trainpilot.events import Event
from trainpilot.settings import Settings, Webhook
from trainpilot.store import Store
from trainpilot.version import __version__

log = logging.getLogger("trainpilot.server")
RANK = {"info": 0, "warning": 1, "critical": 2}
ENDINGS = frozenset({"failed", "stopped", "lost"})
INTAKE = 1024  # alerts waiting for their run to be looked up, all webhooks together
PER_WEBHOOK = 256  # alerts waiting for one webhook; a receiver this far behind loses the newest
ATTEMPTS = 4  # the first try and three retries, after backoff, 2x and 4x backoff
TIMEOUT_S = 5.0  # per request
MAX_RETRY_AFTER_S = 30.0  # a 429's Retry-After is honoured up to this
GRACE_S = 2.0  # at shutdown, what is pending gets this long to go out
REMEMBERED = 100_000  # (run, kind) pairs kept for deduplication, the oldest forgotten first
MAX_TEXT = 1800  # characters of a message's text (Discord takes 2000)
ALERTS = ("sent", "failed", "dropped")

AlertType = Literal["finding", "run_ended", "held_back"]


@dataclass(frozen=True, slots=True)
class Alert:
    """What one alert says; the run's project, name and dashboard link are filled in off the ingest path."""

    type: AlertType
    run_id: str
    event_id: int
    ts: float
    step: int | None
    kind: str | None  # the detector, for a finding
    severity: str | None  # for a finding
    status: str | None  # for a run that ended
    message: str
    suggestion: str | None = None
    project: str | None = None
    run_name: str | None = None
    url: str | None = None
    held: int = 0  # alerts the rate limit kept from the webhook before this one


class TokenBucket:
    """`burst` sends at once, then one per `refill_s`."""

    def __init__(self, burst: int, refill_s: float) -> None:
        self.burst, self.refill_s = burst, refill_s
        self.tokens, self.at = float(burst), time.monotonic()

    def _fill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.refill_s)
        self.at = now

    def take(self) -> bool:
        self._fill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next token."""
        self._fill()
        return max(0.0, (1 - self.tokens) * self.refill_s)


@dataclass
class Hook:
    """One webhook: its queue, its rate limit, and what became of its alerts."""

    webhook: Webhook
    bucket: TokenBucket
    queue: asyncio.Queue[Alert] = field(default_factory=lambda: asyncio.Queue(PER_WEBHOOK))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ALERTS, 0))
    busy: bool = False  # an alert is being sent (or retried)
    held: int = 0  # alerts over the rate limit since the last message: said in the next one
    last_error: str | None = None  # "HTTP 404", "ConnectError": never a URL

    @property
    def pending(self) -> int:
        return self.queue.qsize() + self.busy

    def offer(self, alert: Alert) -> None:
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.counts["dropped"] += 1


class Alerts:
    """The webhooks of `settings`, fed by `observe`; `start` and `close` run in the server's lifespan."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.threshold = RANK.get(settings.alert_severity, RANK["warning"])
        self.hooks = [
            Hook(w, TokenBucket(settings.alert_burst, settings.alert_refill_s)) for w in settings.webhooks
        ]
        self.intake: asyncio.Queue[Alert] = asyncio.Queue(INTAKE)
        self.routing = False  # an alert taken off `intake` and not yet offered to the webhooks
        self.deduplicated = 0
        self._said: OrderedDict[tuple[str, str], int] = OrderedDict()  # (run, kind) -> severity alerted
        self._runs: dict[str, tuple[str | None, str | None]] = {}  # run id -> (project, name)
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._redact = RedactWebhooks(self.hooks)
        self.closing = False

    # -- the ingest side: called by the store's commit listener, never awaits -----------------------

    def observe(self, events: list[Event]) -> None:
        """Queue an alert for each committed event that calls for one; O(1) per event."""
        for event in events:
            if event.kind == "metrics":
                continue
            if event.kind == "insight":
                alert = self._finding(event)
            elif event.kind == "status":
                alert = self._ending(event)
            else:
                continue
            if alert is None or self.closing:
                continue
            try:
                self.intake.put_nowait(alert)
            except asyncio.QueueFull:
                for hook in self.hooks:
                    hook.counts["dropped"] += 1

    def _finding(self, event: Event) -> Alert | None:
        data = event.data
        severity = data.get("severity")
        rank = RANK.get(severity) if isinstance(severity, str) else None
        if rank is None or rank < self.threshold:
            return None
        kind = _text(data.get("kind"), 200) or "finding"
        if not self._first((event.run_id, kind), rank):
            return None
        message = _text(data.get("message"), MAX_TEXT) or kind
        suggestion = _text(data.get("suggestion"), MAX_TEXT)
        step = data.get("step") if isinstance(data.get("step"), int) else event.step
        return Alert(
            "finding", event.run_id, event.id, event.ts, step, kind, severity, None, message, suggestion
        )

    def _ending(self, event: Event) -> Alert | None:
        status = event.data.get("status")
        if not isinstance(status, str) or status not in ENDINGS or not self._first((event.run_id, status), 0):
            return None
        message = _text(event.data.get("reason"), MAX_TEXT) or ""
        return Alert("run_ended", event.run_id, event.id, event.ts, event.step, None, None, status, message)

    def _first(self, key: tuple[str, str], rank: int) -> bool:
        """Whether `key` has not alerted at `rank` or above yet; remembers that it now has."""
        said = self._said.get(key)
        if said is not None and said >= rank:
            self.deduplicated += 1
            return False
        self._said[key] = rank
        self._said.move_to_end(key)
        if len(self._said) > REMEMBERED:
            self._said.popitem(last=False)
        return True

    # -- delivery: tasks of their own ----------------------------------------------------------------

    def start(self) -> None:
        if not self.hooks:
            return
        self._client = httpx.AsyncClient(
            timeout=TIMEOUT_S, headers={"user-agent": f"trainpilot/{__version__}"}, follow_redirects=False
        )
        logging.getLogger("httpx").addFilter(self._redact)
        self._tasks.append(asyncio.create_task(self._route(), name="trainpilot-alerts"))
        for i, hook in enumerate(self.hooks):
            self._tasks.append(asyncio.create_task(self._work(hook), name=f"trainpilot-alerts-{i}"))

    async def _route(self) -> None:
        """Describe each alert's run (one store read per run this server alerts about), then offer it to
        every webhook."""
        while True:
            alert = await self.intake.get()
            self.routing = True
            try:
                alert = await self._described(alert)
            except Exception:  # a store hiccup costs the run's name, not the alert
                log.exception("alerts: could not look up run %s", alert.run_id)
            for hook in self.hooks:
                hook.offer(alert)
            self.routing = False

    async def _described(self, alert: Alert) -> Alert:
        if alert.run_id not in self._runs:
            run = await self.store.get_run(alert.run_id)
            if len(self._runs) >= 10_000:
                self._runs.clear()
            self._runs[alert.run_id] = (run.project, run.name)
        project, name = self._runs[alert.run_id]
        base = self.settings.dashboard_url
        url = f"{base}/#run={quote(alert.run_id, safe='')}" if base else None
        return dataclasses.replace(alert, project=project, run_name=name, url=url)

    async def _work(self, hook: Hook) -> None:
        """Send one webhook's alerts in order. Over the rate limit an alert is dropped and counted, and
        the next message that goes out says how many were held back (on its own once a token is free)."""
        while True:
            timeout = hook.bucket.wait_s() if hook.held else None
            try:
                alert: Alert | None = await asyncio.wait_for(hook.queue.get(), timeout)
            except TimeoutError:
                alert = None
            if alert is None and not hook.bucket.take():
                continue
            if alert is not None and not hook.bucket.take():
                hook.held += 1
                hook.counts["dropped"] += 1
                continue
            held, hook.held = hook.held, 0
            hook.busy = True
            try:
                if alert is None:
                    await self._send(hook, self._held_back(held))
                else:
                    sent = await self._send(hook, dataclasses.replace(alert, held=held) if held else alert)
                    hook.counts["sent" if sent else "failed"] += 1
            finally:
                hook.busy = False

    def _held_back(self, held: int) -> Alert:
        """The message that says how many alerts the rate limit kept from this webhook."""
        s = self.settings
        message = (
            f"trainpilot: {held} alert{'s' if held > 1 else ''} held back by this webhook's rate limit "
            f"({s.alert_burst} at once, then one per {s.alert_refill_s:g} s)"
        )
        base = s.dashboard_url
        message += f"; the dashboard has them all: {base}/" if base else "; the dashboard has them all"
        return Alert("held_back", "", 0, time.time(), None, None, None, None, message, held=held)

    async def _send(self, hook: Hook, alert: Alert) -> bool:
        """POST the alert; retry a network error, a 5xx, a 408 or a 429 with backoff (a 429's
        Retry-After, up to a bound); anything else is the receiver refusing it for good."""
        assert self._client is not None
        body = orjson.dumps(render(hook.webhook.format, alert))
        headers = {"content-type": "application/json"}
        for attempt in range(ATTEMPTS):
            delay = self.settings.alert_backoff_s * 2**attempt
            try:
                response = await self._client.post(hook.webhook.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                hook.last_error = type(exc).__name__
            else:
                if response.is_success:
                    return True
                hook.last_error = f"HTTP {response.status_code}"
                if response.status_code == 429:
                    delay = retry_after(response.headers.get("retry-after"), delay)
                elif response.status_code < 500 and response.status_code != 408:
                    break
            if attempt < ATTEMPTS - 1:
                await asyncio.sleep(delay)
        log.warning(
            "alerts: gave up on a %s alert for run %s to %s: %s",
            alert.type,
            alert.run_id,
            hook.webhook.redacted,
            hook.last_error,
        )
        return False

    async def close(self, grace_s: float = GRACE_S) -> None:
        """Give what is pending `grace_s` to go out, then abandon it, saying so; never blocks longer."""
        self.closing = True
        deadline = time.monotonic() + grace_s
        while self.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = self.pending()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        logging.getLogger("httpx").removeFilter(self._redact)
        if left:
            log.warning("alerts: %d pending alert(s) abandoned at shutdown after a %g s grace", left, grace_s)

    # -- what the server says about them -------------------------------------------------------------

    def queued(self) -> int:
        """Alerts not yet handed to the webhooks."""
        return self.intake.qsize() + self.routing

    def pending(self) -> int:
        return self.queued() + sum(hook.pending for hook in self.hooks)

    def info(self) -> dict[str, Any]:
        """The `alerts` section of /api/system/info: webhooks by scheme and host only (their paths are
        secrets)."""
        return {
            "configured": bool(self.hooks),
            "severity": self.settings.alert_severity,
            "rate_limit": {"burst": self.settings.alert_burst, "refill_s": self.settings.alert_refill_s},
            "queued": self.queued(),
            "deduplicated": self.deduplicated,
            "webhooks": [
                {
                    "url": hook.webhook.redacted,
                    "format": hook.webhook.format,
                    **hook.counts,
                    "pending": hook.pending,
                    "last_error": hook.last_error,
                }
                for hook in self.hooks
            ],
        }


def retry_after(header: str | None, default: float) -> float:
    """A 429's Retry-After in seconds, within [0, MAX_RETRY_AFTER_S]; `default` for a date or junk."""
    try:
        seconds = float(header) if header is not None else default
    except ValueError:
        return default
    return default if math.isnan(seconds) else min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def text(alert: Alert) -> str:
    """The one line a person reads."""
    where = f"run {alert.run_name or alert.run_id}" + (f" ({alert.project})" if alert.project else "")
    at = f" at step {alert.step}" if alert.step is not None else ""
    if alert.type == "held_back":
        return alert.message
    if alert.type == "finding":
        line = f"trainpilot [{alert.severity}] {alert.kind} in {where}{at}: {alert.message}"
    else:
        line = f"trainpilot: {where} {alert.status}{at}" + (f": {alert.message}" if alert.message else "")
    line = line[:MAX_TEXT] + (f" {alert.url}" if alert.url else "")
    if alert.held:
        plural = "s" if alert.held > 1 else ""
        line += f" (and {alert.held} earlier alert{plural} held back by the rate limit)"
    return line


def render(format: str, alert: Alert) -> dict[str, Any]:
    """The request body for a webhook of `format` (json, slack, discord)."""
    line = text(alert)
    if format == "slack":  # Slack reads <...> as links and mentions (<!channel>): text must stay text
        return {"text": line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}
    if format == "discord":  # and Discord pings nobody
        return {"content": line[:2000], "allowed_mentions": {"parse": []}}
    return {
        "source": "trainpilot",
        "type": alert.type,
        "text": line,
        "title": _title(alert),
        "run_id": alert.run_id or None,
        "project": alert.project,
        "run_name": alert.run_name,
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "suggestion": alert.suggestion,
        "step": alert.step,
        "status": alert.status,
        "event_id": alert.event_id or None,
        "ts": alert.ts,
        "url": alert.url,
        "held_back": alert.held,
    }


def _title(alert: Alert) -> str:
    if alert.type == "finding":
        return f"{alert.severity} finding: {alert.kind}"
    if alert.type == "run_ended":
        return f"run {alert.status}"
    return "alerts held back by the rate limit"


def _text(value: Any, limit: int) -> str | None:
    """A field of a stored event as text: any client may store insights, so anything JSON can be here."""
    if value is None:
        return None
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    return shown[:limit]


class RedactWebhooks(logging.Filter):
    """httpx logs each request's URL at info level (shown where a training script logs at info): a
    webhook's path is its secret, so its URL is shown by scheme and host only."""

    def __init__(self, hooks: list[Hook]) -> None:
        super().__init__()
        self.shown = {str(httpx.URL(hook.webhook.url)): hook.webhook.redacted for hook in hooks}

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.shown.get(str(a), a) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True
