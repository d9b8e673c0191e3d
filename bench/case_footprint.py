"""Case 6, footprint: `import trainpilot` time, and the server's memory and CPU idle and under the demo.

Import: fresh `python -c "import trainpilot; trainpilot.init"` processes (the SDK loads at that
lookup), the median wall time minus the median of bare `python -c pass` processes (both reported),
each child checking that torch was not imported;
one `-X importtime` run names the modules that dominate. Server: a real `trainpilot serve` child
process and its analysis process, sampled with psutil while idle, then while the reference trainer
(`trainpilot train`, the demo's model and data, in its own process) streams a run to it; the run's
persisted loss points are read back so the load is known to have arrived.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import cpu_seconds, family, save
from served import served

IMPORT_REPEATS = 9
TARGET_IMPORT_MS = 150.0
TARGET_IDLE_RSS_MB = 80.0
TARGET_IDLE_CPU = 1.0
TARGET_DEMO_CPU = 5.0
# `trainpilot.init` loads the SDK (trainpilot/__init__.py loads it on first use): a training script pays both.
IMPORT = "import trainpilot; trainpilot.init"
CHECK_IMPORT = (
    "import sys, trainpilot; trainpilot.init; "
    "print('HEAVY', ','.join(m for m in ('torch', 'numpy', 'httpx', 'fastapi') if m in sys.modules))"
)


def wall_ms(code: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return 1000 * (time.perf_counter() - started), done.stdout


def import_time(repeats: int) -> dict[str, Any]:
    """Median import time over fresh processes, net of a bare interpreter's start."""
    bare, full, heavy = [], [], ""
    for _ in range(repeats):  # interleaved, so drifts of the machine hit both alike
        bare.append(wall_ms("pass")[0])
        ms, out = wall_ms(CHECK_IMPORT)
        full.append(ms)
        heavy = out.split("HEAVY", 1)[1].strip()
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORT], capture_output=True, text=True
    ).stderr
    return {
        "repeats": repeats,
        "bare_ms": statistics.median(bare),
        "with_import_ms": statistics.median(full),
        "import_ms": statistics.median(full) - statistics.median(bare),
        "heavy_modules": [m for m in heavy.split(",") if m],
        "top_imports": dominant(trace),
    }


def dominant(trace: str, count: int = 8) -> list[tuple[str, float]]:
    """What `import trainpilot` spends its time on: the imports one to three levels below it
    (`-X importtime` indents each name by two spaces a level), by cumulative ms."""
    rows = []
    for line in trace.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if 1 <= depth <= 3:
            rows.append((name.strip(), int(cumulative) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:count]


RSS_AFTER = "{imports}; print(open('/proc/self/status').read().split('VmRSS:')[1])"


def import_rss() -> dict[str, float]:
    """Where the idle server's memory goes: the RSS of a bare interpreter, of one that imported the
    server's modules, and of one that also imported the MCP SDK (what the first /mcp request adds:
    the server loads it then, not at start)."""

    def rss_mb(imports: str) -> float:
        return int(wall_ms(RSS_AFTER.format(imports=imports))[1].split()[0]) / 1024  # "VmRSS:  12345 kB"

    return {
        "bare_mb": rss_mb("pass"),
        "server_modules_mb": rss_mb("import trainpilot.server.app"),
        "with_mcp_mb": rss_mb("import trainpilot.server.app, trainpilot.server.mcp"),
    }


def tree_rss_mb(processes: list[psutil.Process]) -> float:
    return float(sum(p.memory_info().rss for p in processes)) / 2**20


def idle(folder: str, seconds: float) -> dict[str, Any]:
    with served(folder) as (_, server):
        time.sleep(1.0)  # past the start-up work
        processes = family(server.pid)
        before = cpu_seconds(processes)
        time.sleep(seconds)
        return {
            "seconds": seconds,
            "processes": len(processes),
            "cpu_percent": 100 * (cpu_seconds(processes) - before) / seconds,
            "rss_mb": tree_rss_mb(processes),
            "server_process_rss_mb": processes[0].memory_info().rss / 2**20,
            **import_rss(),
        }


def demo(folder: str, epochs: int) -> dict[str, Any]:
    """The reference trainer streaming to the server; the server's CPU over the run's life."""
    with served(folder) as (url, server):
        time.sleep(0.5)  # its analysis process started
        processes = family(server.pid)
        command = [
            sys.executable,
            "-m",
            "trainpilot.cli",
            "train",
            "--server",
            url,
            "--project",
            "footprint",
            "--epochs",
            str(epochs),
            "--data-dir",
            os.path.join(folder, "client"),
            "--checkpoint-dir",
            os.path.join(folder, "checkpoints"),
            "--tensorboard-dir",
            os.path.join(folder, "tb"),
            "--no-progress",
        ]
        errors = Path(folder) / "trainer.err"
        with open(errors, "w") as err:
            trainer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
            samples, peak_rss = [], 0.0  # (wall time, server CPU seconds)
            while trainer.poll() is None:
                samples.append((time.time(), cpu_seconds(processes)))
                peak_rss = max(peak_rss, tree_rss_mb(processes))
                time.sleep(0.1)
        if trainer.returncode != 0:
            raise RuntimeError(f"trainer: exit {trainer.returncode}: {errors.read_text()[-600:]}")
        time.sleep(0.3)
        samples.append((time.time(), cpu_seconds(processes)))
        run = httpx.get(url + "/api/runs", params={"project": "footprint"}).json()["runs"][0]
        params = {"run_id": run["id"], "keys": "train/loss", "max_points": 2}
        loss = httpx.get(url + "/api/metrics/history", params=params).json()["series"]["train/loss"]
    began, ended = run["created_at"], run["updated_at"]  # the run's life, by the server's clock
    inside = [s for s in samples if began <= s[0] <= ended + 0.3] or samples
    return {
        "epochs": epochs,
        "run_s": ended - began,
        "cpu_percent": 100 * (inside[-1][1] - inside[0][1]) / max(1e-9, inside[-1][0] - inside[0][0]),
        "cpu_percent_trainer_life": 100 * (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]),
        "peak_rss_mb": peak_rss,
        "status": run["status"],
        "last_step": run["last_step"],
        "loss_points": loss["total"],
    }


def run(quick: bool) -> Path:
    imports = import_time(5 if quick else IMPORT_REPEATS)
    print(
        f"  import trainpilot: {imports['import_ms']:.0f} ms ({imports['with_import_ms']:.0f} ms with the "
        f"interpreter, bare {imports['bare_ms']:.0f} ms); heavy modules loaded: {imports['heavy_modules']}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tp-footprint-") as folder:
        quiet = idle(os.path.join(folder, "idle"), 1.0 if quick else 10.0)
        print(f"  idle server: {quiet['rss_mb']:.1f} MB RSS, {quiet['cpu_percent']:.2f} % CPU", flush=True)
        load = demo(os.path.join(folder, "demo"), 1 if quick else 8)
    print(
        f"  server during the reference trainer ({load['epochs']} epochs, {load['run_s']:.1f} s, "
        f"{load['loss_points']} loss points persisted, last step {load['last_step']}): "
        f"{load['cpu_percent']:.1f} % CPU, peak {load['peak_rss_mb']:.1f} MB RSS",
        flush=True,
    )
    return save("footprint", {"quick": quick, "import": imports, "idle": quiet, "demo": load})


def verdicts(result: dict[str, Any]) -> list[str]:
    imp, quiet, load = result["import"], result["idle"], result["demo"]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    torch_free = "torch" not in imp["heavy_modules"]
    return [
        f"`{IMPORT}` {imp['import_ms']:.0f} ms (target <= {TARGET_IMPORT_MS:.0f} ms): "
        f"{met(imp['import_ms'] <= TARGET_IMPORT_MS)}",
        f"torch not imported by `{IMPORT}`: {met(torch_free)}",
        f"idle server RSS {quiet['rss_mb']:.1f} MB (target <= {TARGET_IDLE_RSS_MB:.0f} MB): "
        f"{met(quiet['rss_mb'] <= TARGET_IDLE_RSS_MB)}",
        f"idle server CPU {quiet['cpu_percent']:.2f} % (target < {TARGET_IDLE_CPU:.0f} %): "
        f"{met(quiet['cpu_percent'] < TARGET_IDLE_CPU)}",
        f"server CPU during the demo's training {load['cpu_percent']:.1f} % of one core (target < "
        f"{TARGET_DEMO_CPU:.0f} %): {met(load['cpu_percent'] < TARGET_DEMO_CPU)}",
    ]


def fanout_rss(results: dict[str, Any]) -> list[str]:
    """Case 4's server RSS under fan-out load, where that result is present."""
    every = results.get("points", []) + results.get("ladder", [])
    rows = [r for r in every if r.get("system") == "trainpilot"]
    if not rows:
        return ["Server RSS under case 4's fan-out load: see case 4's section."]
    top = max(rows, key=lambda r: r.get("server_rss_mb", 0))
    return [
        f"Server RSS under case 4's fan-out load (from its result): at most {top['server_rss_mb']} MB, "
        f"with {top['subscribers']:,} {top['transport'].upper()} subscribers at {top['rate']:,.0f} events/s."
    ]


def section(result: dict[str, Any]) -> list[str]:
    imp, quiet, load = result["import"], result["idle"], result["demo"]
    top = ", ".join(f"`{name}` {ms:.0f} ms" for name, ms in imp["top_imports"])
    lines = [
        "## 6. Footprint: import time, server memory and CPU",
        "",
        f"`{IMPORT}` (the SDK loads at the first `init` lookup: what a training script pays before its "
        f"first `log()`) in fresh processes, median of {imp['repeats']}: {imp['with_import_ms']:.0f} ms "
        f"with the interpreter's start, {imp['bare_ms']:.0f} ms for a bare `python -c pass`, so "
        f"**{imp['import_ms']:.0f} ms** for the import. Heavy modules it loads: "
        f"{', '.join(imp['heavy_modules']) or 'none of torch, numpy, httpx, fastapi'}. "
        "Largest imports beneath it (`-X importtime`, cumulative, one run; nested ones counted in their "
        f"parents too): {top}.",
        "",
        "| server state | RSS MB | CPU % of one core | load |",
        "| --- | ---: | ---: | --- |",
        f"| idle (fresh, {quiet['seconds']:.0f} s) | {quiet['rss_mb']:.1f} | {quiet['cpu_percent']:.2f} "
        "| none |",
        f"| reference trainer streaming to it | {load['peak_rss_mb']:.1f} (peak) | {load['cpu_percent']:.1f} "
        f"| {load['epochs']} epoch(s) of the demo's model in {load['run_s']:.1f} s: {load['loss_points']:,} "
        f"loss points persisted, last step {load['last_step']}, run {load['status']} |",
        "",
        *(
            [
                f"RSS and CPU are the server's and its analysis process's together ({quiet['processes']} "
                f"processes; the server's own RSS idle: {quiet['server_process_rss_mb']:.1f} MB). "
            ]
            if "processes" in quiet
            else []
        ),
        f"Of the server's idle RSS, importing its modules alone reaches {quiet['server_modules_mb']:.1f} MB "
        f"({quiet['bare_mb']:.1f} MB for a bare interpreter); the MCP SDK, loaded on the first `/mcp` "
        f"request, would bring it to {quiet['with_mcp_mb']:.1f} MB.",
        "",
        "The trainer runs in its own process beside `trainpilot serve` (`make demo` runs both in one "
        "process, where the server's share cannot be told apart); the CPU is the server's processes' "
        "over the run's life, from its creation to its finish.",
        "",
    ]
    fanout = Path(__file__).resolve().parent / "results" / "fanout.json"
    if fanout.exists():
        import json

        lines += fanout_rss(json.loads(fanout.read_text()))
    else:
        lines.append("Server RSS under case 4's fan-out load: see case 4's section.")
    lines += ["", "Targets (issue 10):", ""]
    lines += [f"- {v}" for v in verdicts(result)]
    lines.append("")
    return lines


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
