"""``genmedia loadtest``: write a scenario's trace, replay it open loop against a URL, report,
compare two runs.

The operator's entry to the harness: every input (scenario, trace, keys, URL) is checked before
the first request is sent, and problems are clear messages with file, line and field (exit 2).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from genmedia.loadtests.compare import compare, compare_markdown
from genmedia.loadtests.records import RequestRecord, write_records
from genmedia.loadtests.replay import LiveStats, Locate, PreflightError, ReplayConfig, replay
from genmedia.loadtests.report import (
    ReportError,
    RunInfo,
    read_run,
    render_run,
    summarize,
    write_report,
    write_run_info,
)
from genmedia.loadtests.scenarios import (
    Scenario,
    ScenarioError,
    find_scenario,
    generate_indexed,
    load_scenario,
    stream_locator,
)
from genmedia.loadtests.traces import TraceError, TraceRecord, read_trace, record_lines, write_trace

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)  # no wrapping in pipes and logs
loadtest_app = typer.Typer(
    no_args_is_help=True,
    help="Load tests: scenario traces, open-loop replay, reports and comparisons.",
)
RESULTS = Path("loadtests/results/raw")

ScenarioOpt = Annotated[
    str | None,
    typer.Option(
        "--scenario", "-s", help="Scenario YAML file, or the name of a committed one (smoke)."
    ),
]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def _scenario(name: str) -> tuple[Path, Scenario]:
    path = find_scenario(name)
    try:
        return path, load_scenario(path)
    except ScenarioError as e:
        for issue in e.issues:
            console.print(f"[red]✗[/] {issue}", highlight=False)
        raise _fail(f"{len(e.issues)} problem(s) in the scenario") from None


def _trace(path: Path) -> list[TraceRecord]:
    try:
        return read_trace(path)
    except TraceError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"{path}: {e.strerror or e}") from None


def _keys(pairs: list[str]) -> dict[str, str]:
    keys = {}
    for pair in pairs:
        tenant, sep, key = pair.partition("=")
        if not sep or not tenant.strip() or not key.strip():
            raise _fail(f"--key {pair!r}: expected TENANT=KEY")
        keys[tenant.strip()] = key.strip()
    return keys


def _inputs(
    scenario: str | None, trace: Path | None
) -> tuple[Path | None, Scenario | None, list[TraceRecord], Locate]:
    """Scenario and/or trace → (scenario file, scenario, trace, where each record comes from)."""
    spec_path, spec = _scenario(scenario) if scenario is not None else (None, None)
    if trace is not None:
        records = _trace(trace)
        lines = record_lines(trace)

        def locate(i: int, field: str) -> str:
            return f"{trace}:{lines[i]}: {field}"

        return spec_path, spec, records, locate
    assert spec is not None and spec_path is not None
    indexed = generate_indexed(spec)
    return (
        spec_path,
        spec,
        [r for _, r in indexed],
        stream_locator(spec_path, [i for i, _ in indexed]),
    )


def _replay_live(
    records: list[TraceRecord],
    cfg: ReplayConfig,
    locate: Locate,
    duration: float,
    prepare: Callable[[], None],
) -> list[RequestRecord]:
    """The replay with a live view from its first request; exit 2 when the preflight fails."""
    stats = LiveStats()
    live = Live(console=console, refresh_per_second=2, transient=False)
    started = time.monotonic()

    def on_start() -> None:
        nonlocal started
        prepare()
        started = time.monotonic()
        live.update(_live_table(stats, started, duration))
        live.start()

    async def main() -> list[RequestRecord]:
        async def refresh() -> None:
            while True:
                live.update(_live_table(stats, started, duration))
                await asyncio.sleep(0.5)

        ticker = asyncio.create_task(refresh())
        try:
            return await replay(records, cfg, locate, stats, on_start)
        finally:
            ticker.cancel()

    try:
        return asyncio.run(main())
    except PreflightError as e:
        raise _fail(str(e)) from None
    finally:
        if live.is_started:
            live.update(_live_table(stats, started, duration))
            live.stop()
            console.print()


@loadtest_app.command("trace")
def trace_cmd(
    scenario: ScenarioOpt = None,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Trace JSONL to write.")] = Path(
        "trace.jsonl"
    ),
) -> None:
    """Generate a scenario's trace (seeded: the same file every time) as JSONL."""
    if scenario is None:
        raise _fail("--scenario is required")
    _, s = _scenario(scenario)
    indexed = generate_indexed(s)
    write_trace(out_file, [r for _, r in indexed])
    table = Table("stream", "tenant", "class", "model", "requests", title=f"{s.name}: {out_file}")
    for i, st in enumerate(s.streams):
        n = sum(1 for k, _ in indexed if k == i)
        table.add_row(st.name or f"stream{i}", st.tenant, st.priority, st.model, str(n))
    out.print(table)
    out.print(f"[green]✓[/] {len(indexed)} requests over {s.duration_s:g} s → {out_file}")


def _live_table(stats: LiveStats, started: float, duration: float) -> Table:
    p99 = stats.p99()
    table = Table("elapsed", "sent", "in flight", "done", "completed", "429", "errors", "p99 e2e")
    table.add_row(
        f"{time.monotonic() - started:.0f}/{duration:.0f} s",
        f"{stats.sent}/{stats.total}",
        str(stats.in_flight),
        str(stats.done),
        str(stats.completed),
        str(stats.rejected),
        str(stats.errors),
        "-" if p99 is None else f"{p99:.2f} s",
    )
    return table


def _summary_table(summary: dict, title: str) -> Table:
    table = Table(
        "group",
        "requests",
        "images",
        "img/s",
        "goodput",
        "SLO met",
        "429",
        "errors",
        "queue p99",
        "e2e p50",
        "e2e p99",
        title=title,
    )

    def f(v: float | None, unit: str = "") -> str:
        return "-" if v is None else f"{v:.3g}{unit}"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    rows = [("all", summary["overall"]), *summary["classes"].items()]
    rows += [(f"model {k}", v) for k, v in summary["models"].items()]
    for name, g in rows:
        table.add_row(
            name,
            str(g["requests"]),
            str(g["images"]),
            f(g["throughput_images_per_s"]),
            f(g["goodput_images_per_s"]),
            pct(g["slo_attainment"]),
            pct(g["rate_429"]),
            pct(g["error_rate"]),
            f(g["queue_wait_s"]["p99"], " s"),
            f(g["latency_s"]["p50"], " s"),
            f(g["latency_s"]["p99"], " s"),
        )
    return table


def _print_summary(summary: dict, where: Path) -> None:
    out.print(_summary_table(summary, f"{summary['scenario']} ({summary['source']})"))
    fair = ", ".join(f"{k} {v:.3f}" for k, v in summary["fairness"].items() if v is not None)
    out.print(f"fairness: {fair or '-'}")
    out.print(f"[green]✓[/] report: {where / 'report.md'}")


TraceOpt = Annotated[
    Path | None,
    typer.Option(
        "--trace", "-T", help="Trace JSONL to replay (with --scenario: SLOs and weights)."
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="GENMEDIA_API_KEY", help="API key for tenants without --key."),
]
KeysOpt = Annotated[
    list[str] | None,
    typer.Option("--key", "-k", help="TENANT=KEY: the key of one trace tenant (repeatable)."),
]
OutDirOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output directory (default loadtests/results/<name>-<UTC>)."),
]


@loadtest_app.command("run")
def run_cmd(
    url: Annotated[str, typer.Option(help="Base URL of the genmedia gateway.")],
    scenario: ScenarioOpt = None,
    trace: TraceOpt = None,
    api_key: ApiKeyOpt = None,
    key: KeysOpt = None,
    api: Annotated[str, typer.Option(help="sync or queue.")] = "queue",
    follow: Annotated[str, typer.Option(help="Queue API: follow by 'stream' (SSE) or 'poll'.")] = (
        "stream"
    ),
    out_dir: OutDirOpt = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds a request may take from submit to final status.")
    ] = 300.0,
    note: Annotated[
        str | None, typer.Option(help="What was served (catalog, quotas...), kept in the report.")
    ] = None,
) -> None:
    """Replay a scenario or trace open loop against URL; write raw records and the report."""
    if api not in ("sync", "queue"):
        raise _fail(f"--api {api!r}: expected sync or queue")
    if follow not in ("stream", "poll"):
        raise _fail(f"--follow {follow!r}: expected stream or poll")
    if timeout <= 0:
        raise _fail("--timeout must be > 0")
    if scenario is None and trace is None:
        raise _fail("give --scenario or --trace")
    spec_path, spec, records, locate = _inputs(scenario, trace)
    if not records:
        raise _fail("the trace holds no request")
    name = spec.name if spec else trace.stem if trace else "run"
    cfg = ReplayConfig(
        url=url.rstrip("/"),
        keys=_keys(key or []),
        default_key=api_key,
        api=api,  # type: ignore[arg-type]
        follow=follow,  # type: ignore[arg-type]
        request_timeout_s=timeout,
    )
    missing = sorted({r.tenant for r in records} - set(cfg.keys))
    if missing and api_key is None:
        raise _fail(
            f"no API key for tenant(s) {', '.join(missing)}: pass --api-key KEY "
            "(or GENMEDIA_API_KEY) or --key TENANT=KEY"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out_dir or RESULTS / f"{name}-{stamp}"
    duration = spec.duration_s if spec and trace is None else records[-1].t
    from_spec: dict[str, Any] = (
        {"slo_s": spec.slo.model_dump(), "weights": spec.weights} if spec else {}
    )
    info = RunInfo(
        scenario=name,
        duration_s=duration,
        **from_spec,
        api=api,
        url=cfg.url,
        started_utc=stamp,
        notes={"follow": follow, "trace": str(trace) if trace else None, "note": note},
    )

    def prepare() -> None:  # after the preflight, before the first request
        target.mkdir(parents=True, exist_ok=True)
        write_trace(target / "trace.jsonl", records)
        if spec_path is not None:
            shutil.copyfile(spec_path, target / "scenario.yaml")
        write_run_info(target, info)
        console.print(f"sending {len(records)} requests over {duration:.0f} s to {cfg.url} ({api})")

    results = _replay_live(records, cfg, locate, duration, prepare)
    write_records(target / "requests.jsonl", results)
    summary = write_report(target, results, info)
    _print_summary(summary, target)


@loadtest_app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds requests.jsonl).")],
) -> None:
    """Re-render summary.json, report.md and the plots of a run from its raw records."""
    try:
        summary = render_run(run_dir)
    except ReportError as e:
        raise _fail(str(e)) from None
    _print_summary(summary, run_dir)


def _summary_of(run: Path) -> dict:
    import json

    path = run / "summary.json" if run.is_dir() else run
    if path.name == "summary.json" and path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise _fail(f"{path}: not JSON: {e}") from None
    try:
        records, info = read_run(run)
    except ReportError as e:
        raise _fail(str(e)) from None
    return summarize(records, info)


@loadtest_app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="Run A (directory or summary.json).")],
    b: Annotated[Path, typer.Argument(help="Run B (directory or summary.json).")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Markdown to write (default: B/compare-vs-<A>.md)."),
    ] = None,
) -> None:
    """Two runs side by side with the ratio B / A of every metric."""
    sa, sb = _summary_of(a), _summary_of(b)
    rows = compare(sa, sb)
    a_name = a.name if a.is_dir() else a.parent.name
    b_name = b.name if b.is_dir() else b.parent.name
    table = Table("metric", f"A {a_name}", f"B {b_name}", "B / A", title="comparison")

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    for r in rows:
        table.add_row(r.metric, f(r.a), f(r.b), f(r.ratio))
    out.print(table)
    target = out_file or (b if b.is_dir() else b.parent) / f"compare-vs-{a_name}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(compare_markdown(rows, a_name, b_name))
    out.print(f"[green]✓[/] {target}")
