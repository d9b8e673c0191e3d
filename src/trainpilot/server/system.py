"""What the server says about itself: health, host and process facts, Prometheus exposition."""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import socket
import subprocess
import time
from functools import lru_cache
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from trainpilot.server.hub import Hub
from trainpilot.server.latency import BOUNDS_S
from trainpilot.store import backend_name
from trainpilot.version import __version__

_process = psutil.Process()


async def health(hub: Hub) -> dict[str, Any]:
    store = await hub.store.health()
    broker = hub.broker.health()
    status = "unhealthy" if not store.get("ok") else "ok" if broker.get("ok") else "degraded"
    return {
        "status": status,
        "store": store,
        "broker": broker,
        "uptime_s": round(time.time() - hub.started_at, 3),
    }


def info(hub: Hub) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "version": __version__,
        "host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "cpu": {
            "count": os.cpu_count(),
            "percent": psutil.cpu_percent(interval=None),
            "process_percent": _process.cpu_percent(interval=None),
        },
        "memory": {
            "total_bytes": memory.total,
            "available_bytes": memory.available,
            "percent": memory.percent,
            "process_rss_bytes": _process.memory_info().rss,
        },
        "gpus": gpus(),
        "backends": {
            "store": backend_name(hub.settings.store_url),
            "broker": hub.settings.broker.split(":", 1)[0],
        },
        "connections": hub.broker.counts(),
        "ingest": hub.ingest_latency.summary(),
        "alerts": hub.alerts.info(),
        "llm": hub.advisors.info(),
        "uptime_s": round(time.time() - hub.started_at, 3),
    }


@lru_cache(maxsize=1)
def _nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


def gpus() -> list[dict[str, Any]]:
    """GPUs as nvidia-smi reports them; an empty list where there is none (never an error)."""
    exe = _nvidia_smi()
    if exe is None:
        return []
    query = "name,utilization.gpu,memory.used,memory.total"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    result = []
    for line in out.strip().splitlines():
        name, util, used, total = (p.strip() for p in line.split(","))
        result.append(
            {
                "name": name,
                "utilization_percent": float(util),
                "memory_used_mib": float(used),
                "memory_total_mib": float(total),
            }
        )
    return result


class _HubCollector:
    """Reads the hub's counters at scrape time, so the hot paths keep plain integers."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Any:
        for name, value in self.hub.counters.items():
            yield CounterMetricFamily(
                f"trainpilot_{name}", f"trainpilot {name.replace('_', ' ')}", value=value
            )
        stats = getattr(self.hub.broker, "stats", {})
        for name, value in stats.items():
            yield CounterMetricFamily(f"trainpilot_broker_{name}", f"broker {name}", value=value)
        latency = self.hub.ingest_latency
        cumulative = list(itertools.accumulate(latency.counts))
        yield HistogramMetricFamily(
            "trainpilot_ingest_seconds",
            "ingested batches, receipt to durable commit",
            buckets=[
                *((repr(b), c) for b, c in zip(BOUNDS_S, cumulative, strict=False)),
                ("+Inf", cumulative[-1]),
            ],
            sum_value=latency.sum_s,
        )
        subs = GaugeMetricFamily("trainpilot_subscribers", "live subscribers", labels=["transport"])
        for transport, count in self.hub.broker.counts().items():
            subs.add_metric([transport], count)
        yield subs
        yield from _alert_metrics(self.hub)


def _alert_metrics(hub: Hub) -> Any:
    """Per webhook, named by its position and its scheme and host (its path is a secret)."""
    hooks = hub.alerts.hooks
    if not hooks:
        return
    labels = ["webhook", "url"]
    outcomes = CounterMetricFamily(
        "trainpilot_alerts",
        "alerts by webhook and outcome: sent, failed, dropped",
        labels=[*labels, "outcome"],
    )
    pending = GaugeMetricFamily("trainpilot_alerts_pending", "alerts waiting or being sent", labels=labels)
    for i, hook in enumerate(hooks):
        names = [str(i), hook.webhook.redacted]
        for outcome, count in hook.counts.items():
            outcomes.add_metric([*names, outcome], count)
        pending.add_metric(names, hook.pending)
    yield outcomes
    yield pending


def registry(hub: Hub) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(_HubCollector(hub))
    rss = Gauge("trainpilot_process_rss_bytes", "server resident memory", registry=reg)
    rss.set_function(lambda: _process.memory_info().rss)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return bytes(generate_latest(reg))
