"""Is the advice right? The LLM advisor asked about the labelled corpus, its answers scored by a rubric.

    .venv/bin/python -m trainpilot.analysis.advisor_eval corpus/world --url http://127.0.0.1:8080/v1 \\
        --model qwen2.5-0.5b --limit 10      # or: make advisor-eval (TRAINPILOT_LLM_URL, _MODEL, _KEY)

Each faulty run of the corpus, and a fixed sample of its healthy runs, goes the way a user's run
goes: its events through the wire's decoding into a store, the detectors over them (with the
shipped policy), `run_summary` for what the model sees, and `Advisor.stream` for the answer to the
rubric's question. `corpus/advisor_rubric.toml` says how an answer is scored: whether it names the
run's cause, whether the first fix it names is the right one, and which faults it claims that
neither the label nor a finding backs. The run is renamed (``eval-007``): corpus file names say
the fault. Not part of `make test`: it needs a model, and minutes per answer on a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import re
import statistics
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from trainpilot.analysis import advice
from trainpilot.analysis.corpus import LabelledRun, load_corpus
from trainpilot.analysis.engine import RunAnalysis
from trainpilot.analysis.llm import Advisor, AdvisorError
from trainpilot.analysis.summary import run_summary
from trainpilot.events import NewEvent
from trainpilot.store.memory import MemoryStore
from trainpilot.wire import decode_batch

HEALTHY = "healthy"
# a negation earlier in a match's clause: "there is no sign of overfitting" claims nothing
NEGATION = re.compile(r"\b(no|not|never|without|nor|neither|none|rather than|instead of)\b|n't\b", re.I)
CLAUSE_END = re.compile(r"[.,;:!?()\n]")


@dataclass(frozen=True)
class Claim:
    """A fault an answer may assert, and what backs it: a finding of one of `kinds`, or the run's label."""

    name: str
    pattern: re.Pattern[str]
    kinds: frozenset[str]
    labels: frozenset[str]


@dataclass(frozen=True)
class Expected:
    """What a right answer for one fault label says: its cause, and its fix."""

    cause: tuple[re.Pattern[str], ...]
    fix: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Rubric:
    question: str
    healthy_sample: int
    claims: tuple[Claim, ...]
    labels: dict[str, Expected]


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def load_rubric(path: Path) -> Rubric:
    raw = tomllib.loads(path.read_text())
    claims = tuple(
        Claim(name, _compile(c["pattern"]), frozenset(c["kinds"]), frozenset(c["labels"]))
        for name, c in raw["claims"].items()
    )
    labels = {
        label: Expected(tuple(map(_compile, e["cause"])), tuple(map(_compile, e["fix"])))
        for label, e in raw["labels"].items()
    }
    return Rubric(raw["question"], int(raw["healthy_sample"]), claims, labels)


def mentions(text: str, pattern: re.Pattern[str]) -> list[int]:
    """Where `pattern` matches `text` with no negation before it in its clause."""
    out = []
    for match in pattern.finditer(text):
        before = text[: match.start()]
        clause = CLAUSE_END.split(before)[-1]
        if not NEGATION.search(clause):
            out.append(match.start())
    return out


def _first(text: str, patterns: Iterable[re.Pattern[str]]) -> int | None:
    return min((at for p in patterns for at in mentions(text, p)[:1]), default=None)


def first_fix(answer: str, rubric: Rubric) -> set[str]:
    """The labels whose fix the answer names first: those with a match at the earliest fix position."""
    where = {label: _first(answer, e.fix) for label, e in rubric.labels.items()}
    found = [at for at in where.values() if at is not None]
    if not found:
        return set()
    return {label for label, at in where.items() if at == min(found)}


def invented(answer: str, label: str, backed_kinds: frozenset[str], rubric: Rubric) -> list[str]:
    """The claims the answer makes that neither the run's label nor any of `backed_kinds` backs."""
    return [
        c.name
        for c in rubric.claims
        if mentions(answer, c.pattern) and label not in c.labels and not c.kinds & backed_kinds
    ]


@dataclass(frozen=True)
class Score:
    cause: bool | None  # None for a healthy run: there is no cause to name
    fix_first: bool | None
    invented: list[str]


def score(answer: str, label: str, backed_kinds: frozenset[str], rubric: Rubric) -> Score:
    """An answer against the rubric; `backed_kinds`: the findings' kinds and those the label accepts."""
    made_up = invented(answer, label, backed_kinds, rubric)
    if label == HEALTHY:
        return Score(None, None, made_up)
    expected = rubric.labels[label]
    return Score(_first(answer, expected.cause) is not None, label in first_fix(answer, rubric), made_up)


class FindingsEcho(Advisor):
    """No model: the answer a perfectly obedient one would give, the first finding's message as the
    cause and the findings' suggested fixes in their order. What the grounding alone can reach, and
    so the ceiling of a model that follows it (a model may do better only by knowing more)."""

    def __init__(self) -> None:
        super().__init__("", "findings, echoed (no model)")

    async def prefill(self, summary: dict[str, Any]) -> None:
        return None

    async def stream(self, summary: dict[str, Any], question: str) -> AsyncIterator[str]:
        found = advice.findings(summary)
        if not found:
            yield "The run looks healthy so far."
            return
        fixes = [f"{i}. {f['suggestion']}" for i, f in enumerate(found, 1) if f.get("suggestion")]
        yield "Cause: " + str(found[0].get("message")) + "\nFixes:\n" + "\n".join(fixes)


def plan(runs: list[LabelledRun], rubric: Rubric, limit: int | None = None) -> list[LabelledRun]:
    """Every faulty run and `healthy_sample` healthy ones, round-robin over labels (healthy first), so
    that a `limit` still asks about as many different faults as it can."""
    missing = {r.label for r in runs if not r.healthy} - set(rubric.labels)
    if missing:
        raise ValueError(f"the rubric has no entry for the corpus labels {sorted(missing)}")
    healthy = sorted((r for r in runs if r.healthy), key=lambda r: hashlib.sha1(r.name.encode()).hexdigest())
    groups = [healthy[: rubric.healthy_sample]]
    groups += [
        sorted((r for r in runs if r.label == lab), key=lambda r: r.name) for lab in sorted(rubric.labels)
    ]
    ordered = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return ordered[:limit]


async def summary_of(run: LabelledRun, run_id: str) -> tuple[dict[str, Any], frozenset[str]]:
    """The run as the server would summarise it once finished, and the kinds of its findings."""
    store = MemoryStore()
    await store.create_run(run_id, "advisor-eval", run_id, run.config)
    stored = await store.append(decode_batch(run_id, run.events(), now=0.0))
    analysis = RunAnalysis(config=run.config)
    found = await store.append([i for e in stored for i in analysis.insights(e)])
    end = stored[-1].ts if stored else 0.0
    await store.append([NewEvent(run_id, "status", {"status": "finished"}, ts=end)])
    return await run_summary(store, run_id), frozenset(e.data["kind"] for e in found)


@dataclass
class Asked:
    """One run's answer, its timing and its score: a row of the results file."""

    run: str
    label: str
    findings: list[str]
    prompt_chars: int
    seconds: float
    first_token_s: float | None
    answer: str
    error: str | None
    cause: bool | None
    fix_first: bool | None
    invented: list[str]
    prefill_s: float | None = None  # --prefill: the model read the run first, then the question came


async def ask(
    advisor: Advisor, run: LabelledRun, run_id: str, rubric: Rubric, prefill: bool = False
) -> Asked:
    """One question and its answer, timed from the question; with `prefill` the model read the run
    first, as the ask box has it do while the question is typed."""
    summary, kinds = await summary_of(run, run_id)
    prompt = sum(len(m["content"]) for m in advisor.messages(summary, rubric.question))
    chunks: list[str] = []
    error, first, prefill_s = None, None, None
    if prefill:
        start = time.perf_counter()
        with contextlib.suppress(AdvisorError):  # the question reports what fails
            await advisor.prefill(summary)
        prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    try:
        async for chunk in advisor.stream(summary, rubric.question):
            first = time.perf_counter() - start if first is None else first
            chunks.append(chunk)
    except AdvisorError as exc:
        error = str(exc)
    seconds = time.perf_counter() - start
    answer = "".join(chunks)
    s = score(answer, run.label, kinds | run.expect, rubric)
    return Asked(
        run.name,
        run.label,
        sorted(kinds),
        prompt,
        seconds,
        first,
        answer,
        error,
        s.cause,
        s.fix_first,
        s.invented,
        prefill_s,
    )


def _mark(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def progress(i: int, n: int, a: Asked) -> str:
    ttft = "-" if a.first_token_s is None else f"{a.first_token_s:.1f}s"
    if a.prefill_s is not None:
        ttft += f" (after {a.prefill_s:.1f}s reading the run)"
    tail = f" ERROR {a.error}" if a.error else ""
    return (
        f"[{i}/{n}] {a.run} ({a.label}) {a.seconds:.1f}s, first token {ttft}: cause {_mark(a.cause)}, "
        f"fix first {_mark(a.fix_first)}, invented {', '.join(a.invented) or '-'}{tail}"
    )


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def _pct(hits: int, of: int) -> str:
    return f"{100 * hits / of:.0f}% ({hits}/{of})" if of else "-"


def _secs(values: list[float], how: str) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) if how == 'median' else _p90(values):.1f}"


def table(results: list[dict[str, Any]]) -> str:
    """One markdown row per results file (per model): the figures docs/analysis.md quotes."""
    lines = [
        "| model | runs asked | right cause | right fix first | invented, faulty runs "
        "| invented, healthy runs | errors | s/answer median | p90 | first token median |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        rows = result["runs"]
        faulty = [r for r in rows if r["label"] != HEALTHY]
        healthy = [r for r in rows if r["label"] == HEALTHY]
        answered = [r for r in rows if not r["error"]]
        lines.append(
            f"| {result['model']} | {len(rows)} | {_pct(sum(bool(r['cause']) for r in faulty), len(faulty))} "
            f"| {_pct(sum(bool(r['fix_first']) for r in faulty), len(faulty))} "
            f"| {sum(bool(r['invented']) for r in faulty)}/{len(faulty)} "
            f"| {sum(bool(r['invented']) for r in healthy)}/{len(healthy)} "
            f"| {len(rows) - len(answered)} | {_secs([r['seconds'] for r in answered], 'median')} "
            f"| {_secs([r['seconds'] for r in answered], 'p90')} "
            f"| {_secs([r['first_token_s'] for r in answered if r['first_token_s'] is not None], 'median')} |"
        )
    return "\n".join(lines)


async def run_eval(
    advisor: Advisor,
    runs: list[LabelledRun],
    rubric: Rubric,
    out: Path,
    threads: int | None = None,
    prefill: bool = False,
) -> dict[str, Any]:
    """Ask about each run in turn, printing a line per answer and rewriting `out` after each one, so
    an interrupted evaluation keeps what it measured."""
    result: dict[str, Any] = {
        "model": advisor.model,
        "url": advisor.url,
        "question": rubric.question,
        "settings": {
            "max_tokens": advisor.max_tokens,
            **advisor.options,
            "threads": threads,
            "prefill": prefill,
        },
        "runs": [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, run in enumerate(runs, 1):
        asked = await ask(advisor, run, f"eval-{i:03d}", rubric, prefill)
        print(progress(i, len(runs), asked), flush=True)
        result["runs"].append(asdict(asked))
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def rescore(result: dict[str, Any], runs: list[LabelledRun], rubric: Rubric) -> dict[str, Any]:
    """Saved answers scored again with the rubric as it is now: a changed pattern costs no model time."""
    expect = {r.name: r.expect for r in runs}
    for row in result["runs"]:
        s = score(row["answer"], row["label"], frozenset(row["findings"]) | expect[row["run"]], rubric)
        row.update(cause=s.cause, fix_first=s.fix_first, invented=s.invented)
    return result


def _default_out(model: str) -> Path:
    return Path("bench/results") / f"advisor_eval-{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}.json"


def _saved(args: argparse.Namespace, rubric_path: Path) -> None:
    """--table and --rescore: work on results files, ask no model."""
    paths: list[Path] = args.rescore or args.table
    results = [orjson.loads(p.read_bytes()) for p in paths]
    if args.rescore:
        runs, rubric = load_corpus(Path(args.corpus)), load_rubric(rubric_path)
        for path, result in zip(paths, results, strict=True):
            path.write_bytes(orjson.dumps(rescore(result, runs, rubric), option=orjson.OPT_INDENT_2))
    print(table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", nargs="?", default="corpus/world", help="a folder of manifests and runs")
    env = os.environ.get
    parser.add_argument("--url", default=env("TRAINPILOT_LLM_URL", ""), help="OpenAI-compatible .../v1")
    parser.add_argument("--model", default=env("TRAINPILOT_LLM_MODEL", ""))
    parser.add_argument("--key", default=env("TRAINPILOT_LLM_KEY"), help="bearer token, if any")
    parser.add_argument(
        "--llm-model",
        metavar="NAME|PATH.gguf",
        help="a local model, run as the server runs it (analysis/runtime.py), instead of --url",
    )
    parser.add_argument(
        "--findings-only",
        action="store_true",
        help="no model: score the findings' own messages and fixes as the answer (the grounding's ceiling)",
    )
    parser.add_argument("--threads", type=int, default=0, help="the local model's threads (half the cores)")
    parser.add_argument(
        "--max-tokens", type=int, default=400, help="the longest answer, as the server's default"
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="have the model read each run first, as the ask box has it do; answers timed from the question",
    )
    parser.add_argument("--limit", type=int, default=None, help="ask about the first N runs of the plan")
    parser.add_argument("--out", type=Path, help="results JSON (bench/results/advisor_eval-<model>.json)")
    parser.add_argument("--rubric", type=Path, help="default: advisor_rubric.toml beside the corpus folder")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the endpoint may stay silent")
    parser.add_argument("--table", type=Path, nargs="+", metavar="RESULTS", help="print these files' table")
    parser.add_argument(
        "--rescore", type=Path, nargs="+", metavar="RESULTS", help="score saved answers again"
    )
    args = parser.parse_args()
    rubric_path = args.rubric or Path(args.corpus).parent / "advisor_rubric.toml"
    if args.table or args.rescore:
        _saved(args, rubric_path)
        return
    if not (args.llm_model or args.findings_only) and (not args.url or not args.model):
        parser.error(
            "needs --llm-model, or --url and --model (or TRAINPILOT_LLM_URL and TRAINPILOT_LLM_MODEL)"
        )
    rubric = load_rubric(rubric_path)
    runs = plan(load_corpus(Path(args.corpus)), rubric, args.limit)
    result = asyncio.run(_evaluate(args, runs, rubric))
    print(f"\n{table([result])}\n\nper-run answers and scores: {result['out']}")


async def _evaluate(args: argparse.Namespace, runs: list[LabelledRun], rubric: Rubric) -> dict[str, Any]:
    """With --llm-model the answers come from the local runtime the server would start, with its
    settings (temperature 0, the answer limit); else from the endpoint."""
    if args.findings_only:
        out = args.out or _default_out("findings-only")
        return {**await run_eval(FindingsEcho(), runs, rubric, out), "out": str(out)}
    if not args.llm_model:
        advisor = Advisor(args.url, args.model, args.key, timeout_s=args.timeout, max_tokens=args.max_tokens)
        out = args.out or _default_out(args.model)
        return {**await run_eval(advisor, runs, rubric, out, prefill=args.prefill), "out": str(out)}
    from trainpilot.analysis.runtime import LOCAL_OPTIONS, LocalModel

    model = LocalModel(args.llm_model, threads=args.threads, log_dir=tempfile.gettempdir())
    try:
        url = await model.start()
        advisor = Advisor(
            url,
            model.name,
            model.key,
            timeout_s=args.timeout,
            max_tokens=args.max_tokens,
            options=dict(LOCAL_OPTIONS),
        )
        out = args.out or _default_out(model.name)
        result = await run_eval(advisor, runs, rubric, out, threads=model.threads, prefill=args.prefill)
        return {**result, "out": str(out)}
    finally:
        await model.close()


if __name__ == "__main__":
    main()
