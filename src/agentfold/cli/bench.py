"""`agentfold bench`: measure this machine, print a table, optionally write JSON."""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from agentfold.bench import BACKEND_NAMES, environment, run
from agentfold.bench.peers import PEER_NAMES
from agentfold.bench.scale import DEFAULT_SIZES
from agentfold.cli import main
from agentfold.errors import AgentfoldError

UNITS = {"_per_s": "/s", "_ms": " ms"}


@main.command()
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice([*BACKEND_NAMES, "all"]),
    help="Backend to measure; repeat it, or say 'all'.  [default: sqlite; with --peers: sqlite and postgres]",
)
@click.option("--url", "urls", multiple=True, help="Server URL for a backend, e.g. postgresql://user@host/db.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures here.")
@click.option("--quick", is_flag=True, help="Shorter runs: rougher figures.")
@click.option(
    "--snapshot-1m",
    "big",
    is_flag=True,
    help="Also load a 1,000,000-event stream's state from its snapshot (SQLite; building it takes about a minute).",
)
@click.option("--markdown", is_flag=True, help="Print the figures as a Markdown table (as in the README).")
@click.option(
    "--agents", "agents_only", is_flag=True, help="Only the Pydantic AI agent figures (durable vs plain run)."
)
@click.option(
    "--http",
    "http_only",
    is_flag=True,
    help="Only the HTTP API figures: 32 writers through agentfold serve beside 32 in process (SQLite, PostgreSQL).",
)
@click.option(
    "--integrations",
    is_flag=True,
    help="Only the LangGraph checkpoint storage figures: AgentfoldSaver beside langgraph-checkpoint-sqlite/-postgres.",
)
@click.option(
    "--runs-page",
    "runs_page_only",
    is_flag=True,
    help="Only the inspector's runs page over 100,000 runs (10,000 with --quick); writing them takes minutes.",
)
@click.option(
    "--otel",
    "otel_only",
    is_flag=True,
    help="Only appends with OpenTelemetry off and on (every span sampled and exported in memory), in turns.",
)
@click.option(
    "--payloads",
    "payloads_only",
    is_flag=True,
    help="Only the large-payload figures: 1 MiB payloads appended and read (MB/s), and a fold of 256 KiB events that "
    "skips them, the payloads kept in the event and as blobs.",
)
@click.option(
    "--fanout",
    is_flag=True,
    help="Only the fan-out figures: the relay and a Redis-native group on each --url, redis:// (one Redis) or "
    "redis+cluster:// (a Redis Cluster, measured with the relay waiting for one replica and for none), in turns.",
)
@click.option(
    "--peers",
    is_flag=True,
    help="Only agentfold beside its peers (eventsourcing, DBOS Transact, LangGraph's savers; the bench-peers "
    "extra) and the bare driver, measured in the same run, with ratios.",
)
@click.option(
    "--scale",
    is_flag=True,
    help="Only the costs that must stay flat as the log grows, on stores filled to each of --scale-sizes, with each "
    "figure's ratio to the smallest size (memory, sqlite, postgres, redis).",
)
@click.option(
    "--scale-sizes",
    "scale_sizes",
    default=",".join(str(size) for size in DEFAULT_SIZES),
    show_default=True,
    metavar="N,N,...",
    help="With --scale: the store sizes in events, e.g. 20000,1000000,5000000 (5M takes tens of minutes to fill).",
)
@click.option(
    "--peer",
    "peer_names",
    multiple=True,
    type=click.Choice(PEER_NAMES),
    help="With --peers: only this peer; repeat it.  [default: all]",
)
@click.option(
    "--partitions",
    type=click.IntRange(2, 1024),
    help="Only PostgreSQL in one events table beside one in this many hash partitions, each filled to --events "
    "with SQL, then measured (appends, 16 writers, reads, index sizes).",
)
@click.option(
    "--events",
    type=click.IntRange(1000),
    default=10_000_000,
    show_default=True,
    help="With --partitions: events per store.",
)
def bench(
    backends: tuple[str, ...],
    urls: tuple[str, ...],
    json_path: Path | None,
    quick: bool,
    big: bool,
    markdown: bool,
    agents_only: bool,
    http_only: bool,
    integrations: bool,
    runs_page_only: bool,
    otel_only: bool,
    payloads_only: bool,
    fanout: bool,
    peers: bool,
    scale: bool,
    scale_sizes: str,
    peer_names: tuple[str, ...],
    partitions: int | None,
    events: int,
) -> None:
    """Measure appends, reads and folds, beside the bare driver of the same backend."""
    console = Console(stderr=True)
    if partitions is not None:
        _partitions(urls, partitions, events, json_path, quick, console)
        return
    if scale:
        _scale(backends, urls, scale_sizes, json_path, quick, markdown, console)
        return
    if integrations:
        _integrations(urls, json_path, quick, console)
        return
    if fanout:
        _fanout(urls, json_path, quick, console)
        return
    if peers:
        _peers(backends, urls, peer_names, json_path, quick, markdown, console)
        return
    chosen = list(BACKEND_NAMES) if "all" in backends else list(dict.fromkeys(backends or ("sqlite",)))
    base_urls = _base_urls(urls)
    with console.status("measuring") as status:
        try:
            results = asyncio.run(
                run(
                    chosen,
                    base_urls,
                    quick,
                    progress=lambda text: status.update(text),
                    big=big,
                    agents_only=agents_only,
                    http_only=http_only,
                    runs_page_only=runs_page_only,
                    otel_only=otel_only,
                    payloads_only=payloads_only,
                )
            )
        except AgentfoldError as error:  # messages name URLs with the password hidden
            raise click.ClickException(str(error)) from None
    if markdown:
        click.echo(markdown_table(results))
    else:
        Console().print(_table(results))
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"figures written to {json_path}")


def _table(results: dict[str, Any]) -> Table:
    table = Table(title=f"agentfold bench ({results['environment']['cpus']} CPUs)")
    table.add_column("backend")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for backend, result in results["backends"].items():
        for name, value in result["figures"].items():
            table.add_row(backend, name, _format(name, value))
    return table


def markdown_table(results: dict[str, Any]) -> str:
    """One row per figure, one column per backend."""
    backends = list(results["backends"])
    names = dict.fromkeys(name for result in results["backends"].values() for name in result["figures"])
    lines = ["| figure | " + " | ".join(backends) + " |", "|---|" + "---:|" * len(backends)]
    for name in names:
        cells = [results["backends"][backend]["figures"].get(name) for backend in backends]
        lines.append(f"| {name} | " + " | ".join("" if cell is None else _format(name, cell) for cell in cells) + " |")
    return "\n".join(lines)


def _format(name: str, value: float) -> str:
    if "_vs_" in name:
        return f"{value:.2f}x"
    if "_per_s" in name:
        return f"{value:,.0f}"
    if name.endswith("_ms") or "_ms_" in name:
        return f"{value:,.1f}"
    return f"{value:.2f}"


def _integrations(urls: tuple[str, ...], json_path: Path | None, quick: bool, console: Console) -> None:
    from agentfold.bench.langgraph_storage import DEFAULT_STEPS, QUICK_STEPS, default_pg_url, run_langgraph_storage

    pg_url = next((url for url in urls if url.startswith("postgres")), default_pg_url())
    steps = QUICK_STEPS if quick else DEFAULT_STEPS
    with console.status("measuring") as status, TemporaryDirectory() as workdir:
        try:
            results = asyncio.run(
                run_langgraph_storage(Path(workdir), pg_url, steps, progress=lambda text: status.update(text))
            )
        except AgentfoldError as error:
            raise click.ClickException(str(error)) from None
    early, late = f"step_{results['early_step']}", f"step_{steps}"
    table = Table(title=f"LangGraph checkpoints: {steps} steps of a chat graph, 2 messages per step")
    columns = (
        "saver",
        "bytes",
        "thread bytes",
        "next thread bytes",
        f"aput ms {early}",
        f"aput ms {late}",
        f"aget_tuple ms {early}",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "saver" else "right")
    table.add_column(f"aget_tuple ms {late}", justify="right")
    for saver in results["savers"]:
        table.add_row(
            saver["saver"],
            f"{saver['bytes']:,}",
            f"{saver['thread_bytes']:,}",
            f"{saver['next_thread_bytes']:,}",
            *(f"{saver[f'{figure}_ms_{step}']:.2f}" for figure in ("aput", "aget_tuple") for step in (early, late)),
        )
    Console().print(table)
    decode = [statistics.median(saver[f"decode_ms_{step}"] for saver in results["savers"]) for step in (early, late)]
    click.echo(
        f"LangGraph's serializer decodes the head's channel values in {decode[0]:.2f} ms at step "
        f"{results['early_step']} and {decode[1]:.2f} ms at step {steps}: the part of aget_tuple that grows with "
        "the thread, whatever the saver"
    )
    for name, ratio in results["ratios"].items():
        click.echo(f"{name}: {ratio:.3f}x")
    click.echo("versions: " + ", ".join(f"{name} {version}" for name, version in results["versions"].items()))
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"figures written to {json_path}")


def _fanout(urls: tuple[str, ...], json_path: Path | None, quick: bool, console: Console) -> None:
    from agentfold.bench.fanout_bench import measure_fanout

    chosen = [url for url in urls if url.startswith(("redis://", "redis+cluster://"))] or ["redis://127.0.0.1:6379/0"]
    events, turns = (5_000, 1) if quick else (20_000, 3)
    with console.status("measuring") as status:
        try:
            results = asyncio.run(measure_fanout(chosen, events, turns, progress=lambda text: status.update(text)))
        except AgentfoldError as error:
            raise click.ClickException(str(error)) from None
    table = Table(title=f"fan-out: {events:,} events, {results['partitions']} partitions, median of {turns} turns")
    for column in ("target", "relay events/s", "3-member group events/s"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for name, figures in results["figures"].items():
        table.add_row(name, f"{figures['relay_events_per_s']:,.0f}", f"{figures['group_events_per_s']:,.0f}")
    Console().print(table)
    if json_path is not None:
        json_path.write_text(json.dumps({"environment": environment(), **results}, indent=2) + "\n")
        console.print(f"figures written to {json_path}")


def _base_urls(urls: tuple[str, ...]) -> dict[str, str]:
    base_urls: dict[str, str] = {}
    for url in urls:
        scheme = url.split("://", 1)[0]
        base_urls["postgres" if scheme.startswith("postgres") else scheme] = url
    return base_urls


def _scale(
    backends: tuple[str, ...],
    urls: tuple[str, ...],
    sizes_text: str,
    json_path: Path | None,
    quick: bool,
    markdown: bool,
    console: Console,
) -> None:
    from agentfold.bench.scale import SCALE_BACKENDS, Turns, figure_rows, parse_sizes, run_scale
    from agentfold.bench.scale import markdown as scale_markdown

    try:
        sizes = parse_sizes(sizes_text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--scale-sizes") from None
    chosen = list(SCALE_BACKENDS) if "all" in backends else list(dict.fromkeys(backends or ("sqlite",)))
    unsupported = [backend for backend in chosen if backend not in SCALE_BACKENDS]
    if unsupported:
        raise click.UsageError(f"--scale measures {', '.join(SCALE_BACKENDS)}; not {', '.join(unsupported)}")
    with console.status("measuring") as status:
        try:
            results = asyncio.run(
                run_scale(
                    chosen,
                    _base_urls(urls),
                    sizes,
                    Turns.quick() if quick else Turns(),
                    progress=lambda text: status.update(text),
                )
            )
        except AgentfoldError as error:
            raise click.ClickException(str(error)) from None
    if markdown:
        click.echo(scale_markdown(results))
    else:
        for backend, result in results["backends"].items():
            table = Table(title=f"agentfold bench --scale: {backend} ({results['environment']['cpus']} CPUs)")
            table.add_column("figure")
            for row in result["sizes"]:
                table.add_column(f"{row['size']:,} events", justify="right")
            for name, cells in figure_rows(result):
                table.add_row(name, *cells)
            Console().print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"figures written to {json_path}")


def _peers(
    backends: tuple[str, ...],
    urls: tuple[str, ...],
    peer_names: tuple[str, ...],
    json_path: Path | None,
    quick: bool,
    markdown: bool,
    console: Console,
) -> None:
    from agentfold.bench.peers import PeerSizes, default_pg_url, run_peers

    chosen = [backend for backend in ("sqlite", "postgres") if not backends or backend in backends or "all" in backends]
    if not chosen:
        raise click.UsageError("--peers measures the sqlite and postgres backends; name one of them with --backend")
    pg_url = next((url for url in urls if url.startswith("postgres")), default_pg_url())
    sizes = PeerSizes.quick() if quick else PeerSizes()
    with console.status("measuring") as status, TemporaryDirectory(prefix="agentfold-peers-") as workdir:
        try:
            results = asyncio.run(
                run_peers(
                    list(peer_names or PEER_NAMES),
                    chosen,
                    pg_url,
                    Path(workdir),
                    sizes,
                    progress=lambda text: status.update(text),
                )
            )
        except AgentfoldError as error:
            raise click.ClickException(str(error)) from None
    if markdown:
        click.echo(peers_summary_markdown(results) + "\n\n" + peers_markdown(results))
    else:
        Console().print(_peers_table(results))
    for peer, packages in results["not_installed"].items():
        console.print(
            f"{peer}: not measured, {', '.join(packages)} not installed (pip install 'agentfold[bench-peers]')"
        )
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"figures written to {json_path}")


PEER_COLUMNS = ("peer", "backend", "figure", "agentfold", "peer's", "agentfold ahead", "note")


def _peer_cells(comparison: dict[str, Any]) -> list[str]:
    unit = comparison["unit"]
    return [
        f"{comparison['peer']} {comparison['peer_version']}",
        comparison["backend"],
        comparison["figure"],
        _format_unit(unit, comparison["agentfold"]),
        _format_unit(unit, comparison["peer_value"]),
        f"{comparison['ratio']:.2f}x",
        comparison["note"],
    ]


def _peers_table(results: dict[str, Any]) -> Table:
    table = Table(title=f"agentfold beside its peers ({_peers_machine(results)})")
    for column in PEER_COLUMNS:
        table.add_column(column, justify="right" if column in ("agentfold", "peer's", "agentfold ahead") else "left")
    for comparison in results["comparisons"]:
        table.add_row(*_peer_cells(comparison))
    return table


def peers_markdown(results: dict[str, Any]) -> str:
    """One row per comparison: both figures, and the ratio (above 1, agentfold is ahead)."""
    lines = [
        f"{_peers_machine(results)}",
        "",
        "| " + " | ".join(PEER_COLUMNS) + " |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    lines += ["| " + " | ".join(_peer_cells(comparison)) + " |" for comparison in results["comparisons"]]
    return "\n".join(lines)


def peers_summary_markdown(results: dict[str, Any]) -> str:
    """The ratios alone, one row per figure and peer, one column per backend (the README's table)."""
    backends = list(dict.fromkeys(comparison["backend"] for comparison in results["comparisons"]))
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for comparison in results["comparisons"]:
        rows.setdefault((comparison["figure"], comparison["peer"]), {})[comparison["backend"]] = comparison["ratio"]
    lines = ["| agentfold ahead (ratio) | " + " | ".join(backends) + " |", "|---|" + "---:|" * len(backends)]
    for (figure, peer), ratios in rows.items():
        cells = [f"{ratios[backend]:.2f}x" if backend in ratios else "" for backend in backends]
        lines.append(f"| `{figure}` vs {peer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _peers_machine(results: dict[str, Any]) -> str:
    env = results["environment"]
    return (
        f"{env['measured_at']}, {env['cpus']} CPUs, load average {env.get('load_average_at_start')} at the start and "
        f"{env.get('load_average_at_end')} at the end; agentfold ahead: above 1, agentfold is faster or smaller"
    )


def _format_unit(unit: str, value: float) -> str:
    if unit == "ms":
        return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"
    return f"{value:,.0f}"


def _partitions(
    urls: tuple[str, ...], partitions: int, events: int, json_path: Path | None, quick: bool, console: Console
) -> None:
    from agentfold.bench.partition_bench import measure_partitions, summary

    base_url = next((url for url in urls if url.startswith("postgres")), None)
    with console.status("measuring") as status:
        try:
            results = summary(
                asyncio.run(measure_partitions(base_url, events, partitions, quick, lambda text: status.update(text)))
            )
        except AgentfoldError as error:
            raise click.ClickException(str(error)) from None
    table = Table(title=f"PostgreSQL at {events:,} events: one table and {partitions} hash partitions")
    table.add_column("figure")
    for layout in results:
        table.add_column(layout, justify="right")
    for key in results[next(iter(results))]:
        table.add_row(key, *(_format(key, results[layout].get(key, float("nan"))) for layout in results))
    Console().print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"figures written to {json_path}")
