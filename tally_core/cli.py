"""The ``tally`` command.

``tally demo`` runs a simulated workload through Tally on the embedded store
and prints what it learned and the money saved; ``tally stats TASK`` shows the
bandit's view of a task type (from a store directory or a Redis store).
Reading the call log (a store directory's SQLite ledger or a PostgreSQL
URL): ``report``, ``savings``, ``export``, ``rollouts`` (gradual rollout
transitions) and ``shadow-report`` (paired shadow-test figures);
``pricing`` shows and refreshes the price map, ``dashboard`` serves the web
dashboard, ``bench`` runs the simulator and replays.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from tally_core.errors import TallyError
from tally_core.home import LEDGER as _LEDGER
from tally_core.home import StoreDir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Tally: route each LLM call to the cheapest model that is good enough.",
)


def _console() -> Any:
    """A rich console; piped, 120 columns wide rather than squeezed into 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)


def _plugins(group: str) -> list[tuple[str, Any]]:
    """What installed adapters register in an entry-point ``group``, loaded,
    as (name, object); one that fails to load is left out (logged)."""
    import logging
    import os
    from importlib.metadata import entry_points

    # Adapters may import LiteLLM: the CLI is offline, so it must read its
    # bundled price map, never fetch one (set before the first import).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    out = []
    for ep in entry_points(group=group):
        try:
            out.append((ep.name, ep.load()))
        except Exception as exc:  # the adapter's library is missing or broken
            logging.getLogger("tally.cli").info("%s plugin %s not loaded: %s", group, ep.name, exc)
    return out


def _demo_runner() -> tuple[Any, str | None]:
    """The adapter's demo runner (``tally.demo`` entry point: the LiteLLM
    adapter's), or None and why not."""
    found = _plugins("tally.demo")
    if not found:
        return None, "litellm is not installed or could not be imported"
    return found[0][1], None


@app.command()
def demo(
    calls: int = typer.Option(3000, min=100, max=1_000_000, help="Simulated calls."),
    scenario: str = typer.Option("seed-landscape", help="Shipped scenario name or JSON path."),
    store: str = typer.Option(None, help="State directory (default $TALLY_HOME or ~/.tally)."),
    seed: int = typer.Option(1, help="Seed for the workload and the router."),
    fresh: bool = typer.Option(
        True, help="Forget what the demo org learned before (never touches other orgs)."
    ),
    org: str = typer.Option(
        "demo", help="Org the demo's calls are learned and logged under (tally report --org)."
    ),
    holdout: float = typer.Option(
        0.05,
        min=0.0,
        max=0.5,
        help="Share of calls sent to the fallback as a control group (for tally savings).",
    ),
) -> None:
    """Route a simulated workload through a litellm.Router with Tally installed, then
    show what Tally learned, the money saved against always-the-best-model, and the
    quality held.

    Offline: every deployment answers with a LiteLLM mock response whose tokens,
    quality and outages come from the scenario. Without LiteLLM installed, the
    workload goes to Tally directly.

    Example: tally demo --calls 3000 --store /tmp/tally-demo
    """
    from rich.table import Table

    from tally_core.eval.sim import FixedRouter, TallyRouter, load_scenario, simulate
    from tally_core.home import default_home
    from tally_core.router import Tally

    console = _console()

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, markup=False)  # no wrapping, no [markup]

    try:
        sc = load_scenario(scenario)
    except TallyError as exc:
        raise _bad_input(exc) from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed JSON file
        raise _fail(f"--scenario: {exc}") from None
    where = store or default_home()
    joined = {e.model for e in sc.events if e.join}
    pool = [m for m in sc.models if (m if isinstance(m, str) else m["name"]) not in joined]
    try:
        tally = Tally(pool, fallback=sc.fallback, store=where, seed=seed, holdout=holdout)
    except (TallyError, OSError) as exc:
        raise _fail(f"--store: cannot use {where}: {exc}") from None
    try:
        if fresh:
            tally.store.reset(org=org)  # the demo's own state only
            tally.refresh()
        if console.is_terminal:
            with console.status("Loading LiteLLM..."):
                run_demo, why_not = _demo_runner()
        else:
            run_demo, why_not = _demo_runner()
        if run_demo is not None:
            how = "through a litellm.Router with Tally installed (mock responses, no network)"
        else:
            say(
                f"Note: {why_not}; routing with Tally directly "
                "(pip install 'tally-router[litellm]' to run through a litellm.Router)."
            )
            how = "through Tally"
        say(f"Routing {calls} simulated calls ({sc.name}) {how}; store: {where}")
        failed = 0

        def run(on_call: Callable[[int], None] | None) -> tuple[Any, Any]:
            nonlocal failed
            if run_demo is not None:
                r = run_demo(sc, tally, calls=calls, seed=seed, on_call=on_call, org=org)
                failed = r.failed_calls
                if r.adapter_errors:
                    errors = r.adapter_errors
                    say(f"Adapter errors (failed open): {errors}")
                return r.baseline, r.routed
            best = FixedRouter("always-best", sc.fallback)
            direct = TallyRouter(sc, seed, tally=tally, org=org, flush_every=25, on_call=on_call)
            res = simulate(sc, [best, direct], seed=seed, calls=calls)
            failed = res["tally"].errors
            return res["always-best"], res["tally"]

        if console.is_terminal:
            from rich.progress import MofNCompleteColumn, Progress

            columns = (*Progress.get_default_columns(), MofNCompleteColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                bar = progress.add_task("routing", total=calls)
                base, ours = run(lambda i: progress.update(bar, completed=i))
        else:
            base, ours = run(None)
        tally.flush(10.0)

        table = Table(title="What Tally learned (per task type)")
        heads = ("task type", "floor", "routes to", "phase", "confidence", "share to cheapest")
        for col in heads:
            table.add_column(col)
        cheapest = min(tally.catalog, key=lambda s: s.input_cost_per_mtok or 0.0).name
        for name, spec in sc.tasks.items():
            # The plan, not one random draw: the model exploited (or, while
            # learning, the one being calibrated; or the fallback).
            env = {"task_type": name, "quality_floor": spec.floor, "org": org, **spec.envelope}
            rows = tally.stats(name, envelope=env)
            order = ("exploit", "calibrate", "fallback")
            pick = next((r for ph in order for r in rows if r["phase"] == ph), None)
            pt = ours.per_task[name]
            share = pt["models"].get(cheapest, 0) / max(pt["calls"], 1)
            floor = "parity" if spec.floor is None else f"{spec.floor:.2f}"
            model, phase, conf = (
                (pick["model"], pick["phase"], f"{pick['confidence']:.2f}")
                if pick is not None
                else (sc.fallback, "fallback", "-")
            )
            table.add_row(name, floor, model, phase, conf, f"{share:.0%}")
        console.print(table)
        saved = base.cost_usd - ours.cost_usd
        share_saved = saved / base.cost_usd if base.cost_usd else 0.0
        say(
            f"Cost: ${ours.cost_usd:,.2f} with Tally vs ${base.cost_usd:,.2f} always on "
            f"{sc.fallback}: saved ${saved:,.2f} ({share_saved:.0%})."
        )
        met = 1.0 - ours.violation_rate
        say(
            f"Quality held: {met:.2%} of calls met their task's floor after warm-up "
            f"({ours.violation_rate:.2%} below); mean true quality {ours.mean_quality:.3f} "
            f"vs {base.mean_quality:.3f} always on {sc.fallback}."
        )
        if failed:
            say(f"Provider errors: {failed} calls failed during the scenario's outage.")
        store_opt = f" --store {where}" if store else ""
        first = next(iter(sc.tasks), "qa-simple")
        say(
            f"Next: tally savings --org {org}{store_opt}  |  tally report --org {org}{store_opt}"
            f"  |  tally stats {first} --org {org}{store_opt}"
        )
    finally:
        tally.close()


@app.command()
def stats(
    task_type: str = typer.Argument(..., help="Task type, e.g. code-debug."),
    store: str = typer.Option(
        None,
        help="State store: a directory (default $TALLY_HOME or ~/.tally), or a redis:// or "
        "rediss:// URL (?prefix=NAME: the deployment's key prefix).",
    ),
    models: str = typer.Option(
        None, help="Comma-separated pool (default: every model the store has seen)."
    ),
    floor: float = typer.Option(None, min=0.0, max=1.0, help="Quality floor to judge against."),
    org: str = typer.Option("default", help="Org (tenant)."),
) -> None:
    """The bandit's view of a task type: per model calls, quality, confidence, phase.

    Reads the learned state through the store (a directory or a fleet's Redis)
    and writes nothing.

    Examples: tally stats code-debug --floor 0.8 |
    tally stats qa-simple --store "rediss://tally@cache:6380/0?prefix=prod"
    """
    from rich.table import Table

    from tally_core.catalog import store_price_map
    from tally_core.envelope import normalise_task_type
    from tally_core.errors import InvalidFieldError
    from tally_core.router import Tally
    from tally_core.stores import open_store
    from tally_core.stores.readonly import ReadOnlyStore

    try:
        tt = normalise_task_type(task_type)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TASK_TYPE") from None
    try:
        inner = open_store(store)
    except InvalidFieldError as exc:  # the URL's own fields (prefix, TLS files) by name
        raise _fail(f"--store: {exc.args[1] if exc.field == 'store' else exc}") from None
    except TallyError as exc:
        raise _fail(f"--store: {exc}") from None
    where = getattr(inner, "url", None) or inner.directory
    try:
        if models:
            pool = [m.strip() for m in models.split(",") if m.strip()]
        else:
            state = inner.load([(org, tt)]).get((org, tt))
            if not state:
                typer.echo(f"no learned state for {tt!r} (org {org!r}) in {where}", err=True)
                raise typer.Exit(1)
            pool = sorted(state["cells"].get("*", {}))
        # A read-only view: no spool replayed, no ledger opened, nothing written.
        with Tally(
            pool,
            store=ReadOnlyStore(inner, who="tally stats"),
            ledger=":memory:",
            background=False,
            price_map=store_price_map(inner),
        ) as tally:
            rows = tally.stats(tt, org=org, quality_floor=floor)
    except TallyError as exc:
        raise _fail(str(exc)) from None
    finally:
        inner.close()
    table = Table(title=f"Bandit confidence — task: {tt}")
    for col in ("model", "calls", "mean quality", "confidence", "phase", "latency ms", "cost $"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            str(r["calls"]),
            "-" if r["mean_quality"] is None else f"{r['mean_quality']:.3f}",
            f"{r['confidence']:.2f}",
            r["phase"],
            "-" if r["mean_latency_ms"] is None else f"{r['mean_latency_ms']:.0f}",
            f"{r['cost_usd']:.4f}",
        )
    _console().print(table)


# -- reports: report, savings, export, pricing, bench ---------------------------

if TYPE_CHECKING:
    from rich.text import Text

    from tally_core.ledger import Ledger
    from tally_core.reports import Report, Savings

_STORE_HELP = "State directory (default $TALLY_HOME or ~/.tally)."
_SINCE_HELP = "From (inclusive): ISO date or datetime, UTC unless it has an offset."
_UNTIL_HELP = "Up to (exclusive); a bare date includes that whole day."
_PALETTE = (
    "cyan",
    "magenta",
    "green",
    "yellow",
    "blue",
    "red",
    "bright_cyan",
    "bright_magenta",
    "bright_green",
    "bright_yellow",
    "bright_blue",
    "bright_red",
)
_GLYPHS = "█▓▒░▞▚"  # model mix: a glyph as well as a colour, so it reads without colour
_EIGHTHS = " ▏▎▍▌▋▊▉"
_SPARKS = "▁▂▃▄▅▆▇█"


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error; ``raise _fail(...)`` exits with ``code``."""
    typer.echo(f"tally: {message}", err=True)
    return typer.Exit(code)


def _bad_input(exc: TallyError) -> typer.Exit:
    from tally_core.errors import InvalidFieldError

    if isinstance(exc, InvalidFieldError):
        return _fail(f"--{exc.field.replace('_', '-')}: {exc.args[1]}")
    return _fail(str(exc))


def _choice(value: str, allowed: tuple[str, ...], option: str = "--format") -> str:
    v = value.lower()
    if v not in allowed:
        raise _fail(f"{option}: must be one of {', '.join(allowed)}, got {value!r}")
    return v


def _store_path(store: str | None) -> tuple[Any, bool]:
    """The store directory, and whether the user named it."""

    return StoreDir(store).root, store is not None


def _shown(store: str | None) -> Any:
    """Where the reports read from, as printed: a ledger URL loses its password."""
    from tally_core.ledger import is_postgres_url

    if is_postgres_url(store):
        from tally_core.ledger.postgres import redact_url

        return redact_url(str(store))
    return _store_path(store)[0]


def _open_ledger(store: str | None) -> Ledger:
    """The store's ledger, read-only; a one-line error when there is none."""
    from tally_core.ledger import Ledger, is_postgres_url, open_ledger

    if is_postgres_url(store):  # a fleet's shared ledger
        try:
            return open_ledger(str(store), readonly=True)
        except TallyError as exc:
            raise _fail(str(exc)) from None
    where, _ = _store_path(store)
    path = where if where.is_file() else where / _LEDGER
    if not path.is_file():
        raise _fail(f"no Tally store at {where} (no {_LEDGER}); pass --store DIR or set TALLY_HOME")
    try:
        return Ledger(path, readonly=True)
    except TallyError as exc:
        raise _fail(str(exc)) from None


def _print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:,.4f}"


def _si(n: int) -> str:
    """1234 -> 1.2k, 16573327 -> 16.6M (tables; JSON and CSV keep exact counts)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _bar(frac: float, width: int = 20) -> str:
    eighths = round(min(max(frac, 0.0), 1.0) * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _spark(values: list[float | None], lo: float, hi: float) -> str:
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        else:
            k = 0 if hi <= lo else round((v - lo) / (hi - lo) * (len(_SPARKS) - 1))
            out.append(_SPARKS[min(max(k, 0), len(_SPARKS) - 1)])
    return "".join(out)


def _stacked(counts: dict[str, int], colors: dict[str, tuple[str, str]], width: int = 40) -> Text:
    """One bar, a coloured segment per model (largest-remainder rounding)."""
    from rich.text import Text

    total = sum(counts.values()) or 1
    raw = {m: c / total * width for m, c in counts.items()}
    cells = {m: int(v) for m, v in raw.items()}
    for m in sorted(raw, key=lambda m: raw[m] - cells[m], reverse=True)[
        : width - sum(cells.values())
    ]:
        cells[m] += 1
    text = Text()
    for m, (glyph, style) in colors.items():
        if cells.get(m):
            text.append(glyph * cells[m], style=style)
    return text


def _when(ts: float | None) -> str:
    from tally_core.reports import _iso

    text = _iso(ts)
    return "-" if text is None else text[:19].replace("T", " ")


_ROLLUP_CSV = (
    "section",
    "bucket",
    "start",
    "org",
    "task_type",
    "model",
    "calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cost_share",
    "errors",
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "quality_obs",
    "mean_quality",
    "inferred",
    "given",
)


def _report_csv(rep: Report) -> str:
    """The report as tidy rows: one ``section`` column, then the figures."""
    from dataclasses import asdict

    from tally_core.reports import csv_text

    rows: list[dict[str, Any]] = [{"section": "total", **asdict(rep.totals)}]
    for section, col, rollups in (
        ("model", "model", rep.by_model),
        ("org", "org", rep.by_org),
        ("task_type", "task_type", rep.by_task_type),
        ("time", "bucket", rep.by_time),
    ):
        for r in rollups:
            rows.append({"section": section, col: r.key, **asdict(r)})
    rows += [{"section": "quality", **q} for q in rep.quality]
    rows += [{"section": "quality_history", **q} for q in rep.quality_history]
    rows += [{"section": "task_mix", **m} for m in rep.task_mix]
    for b in rep.mix:
        for m, k in b["models"].items():
            rows.append(
                {
                    "section": "mix",
                    "bucket": b["bucket"],
                    "start": b["start"],
                    "model": m,
                    "calls": k,
                }
            )
    return csv_text(rows, _ROLLUP_CSV)


def _rollup_table(title: str, head: str, rollups: list[Any], with_bar: bool = True) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column(head)
    for col in ("calls", "tokens in/out", "cost", "share"):
        table.add_column(col, justify="right")
    if with_bar:
        table.add_column("")
    for col in ("p50 ms", "p95 ms", "errors", "quality"):
        table.add_column(col, justify="right")
    for r in rollups:
        row = [
            r.key,
            f"{r.calls:,}",
            f"{_si(r.input_tokens)}/{_si(r.output_tokens)}",
            _usd(r.cost_usd),
            f"{r.cost_share:.0%}",
        ]
        if with_bar:
            row.append(_bar(r.cost_share, 16))
        row += [
            _num(r.latency_p50_ms, ".0f"),
            _num(r.latency_p95_ms, ".0f"),
            f"{r.error_rate:.1%}",
            _num(r.mean_quality),
        ]
        table.add_row(*row)
    return table


def _task_mix_table(task_mix: list[dict[str, Any]]) -> Any:
    """Calls per task type, inferred from the messages or given by the caller."""
    from rich.table import Table

    table = Table(title="Task mix (task type inferred from the messages or given)",
                  title_justify="left")
    for col, just in (("task type", "left"), ("calls", "right"), ("inferred", "right"),
                      ("given", "right"), ("", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in task_mix:
        table.add_row(m["task_type"], f"{m['calls']:,}", f"{m['inferred']:,}",
                      f"{m['given']:,}", f"{m['inferred_share']:.0%} inferred")
    return table


def _print_report(rep: Report, where: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    t = rep.totals
    if rep.empty:
        console.print(f"No calls in {where} for this selection.")
        return
    console.print(
        f"[bold]{t.calls:,} calls[/bold], {_usd(t.cost_usd)}, "
        f"{t.input_tokens:,} tokens in / {t.output_tokens:,} out; "
        f"latency p50 {_num(t.latency_p50_ms, '.0f')} ms, p95 {_num(t.latency_p95_ms, '.0f')} ms; "
        f"errors {t.error_rate:.1%}; mean quality {_num(t.mean_quality)}"
    )
    source = (
        "; from the hourly roll-ups (latency percentiles from a sketch)"
        if rep.source == "rollups" else ""
    )
    console.print(
        f"[dim]Calls from {_when(rep.first_ts)} to {_when(rep.last_ts)} UTC; store {where}"
        f"{source}[/dim]"
    )
    console.print(_rollup_table("Cost by model", "model", rep.by_model))
    if len(rep.by_org) > 1 or rep.filters.get("org"):
        console.print(_rollup_table("Cost by org", "org", rep.by_org))
    console.print(_rollup_table("Cost by task type", "task type", rep.by_task_type))
    if any(m["inferred"] for m in rep.task_mix):
        console.print(_task_mix_table(rep.task_mix))
    peak = max((r.cost_usd for r in rep.by_time), default=0.0) or 1.0
    unit = "slice" if rep.bucket == "split" else rep.bucket
    times = Table(title=f"Cost per {unit} (UTC)", title_justify="left")
    for col, just in (
        (unit, "left"),
        ("calls", "right"),
        ("cost", "right"),
        ("", "left"),
        ("p50 ms", "right"),
        ("p95 ms", "right"),
        ("errors", "right"),
        ("quality", "right"),
    ):
        times.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rep.by_time:
        times.add_row(
            r.key,
            f"{r.calls:,}",
            _usd(r.cost_usd),
            _bar(r.cost_usd / peak, 24),
            _num(r.latency_p50_ms, ".0f"),
            _num(r.latency_p95_ms, ".0f"),
            f"{r.error_rate:.1%}",
            _num(r.mean_quality),
        )
    console.print(times)
    colors = {
        r.key: (_GLYPHS[i % len(_GLYPHS)], _PALETTE[i % len(_PALETTE)])
        for i, r in enumerate(rep.by_model)
    }
    mix = Table(title=f"Model mix per {unit} (share of calls)", title_justify="left")
    mix.add_column(unit)
    mix.add_column("calls", justify="right")
    mix.add_column("mix")
    for b in rep.mix:
        mix.add_row(b["bucket"], f"{b['calls']:,}", _stacked(b["models"], colors))
    legend = Text("  ")
    for m, (glyph, style) in colors.items():
        legend.append(glyph * 2, style=style)
        legend.append(f" {m}   ")
    console.print(mix)
    console.print(legend)
    starts = [b["start"] for b in rep.mix]
    series: dict[tuple[str, str], dict[float, float | None]] = {}
    for h in rep.quality_history:
        series.setdefault((h["task_type"], h["model"]), {})[h["start"]] = h["mean_quality"]
    # One scale for the table, set by buckets with a few observations (a
    # bucket of one pass/fail score would stretch it to 0-1); others clamp.
    values = [h["mean_quality"] for h in rep.quality_history if h["quality_obs"] >= 5] or [
        h["mean_quality"] for h in rep.quality_history if h["mean_quality"] is not None
    ]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    quality = Table(
        title=f"Quality by task type and model (over time: ▁ = {lo:.2f}, █ = {hi:.2f})",
        title_justify="left",
    )
    for col, just in (
        ("task type", "left"),
        ("model", "left"),
        ("calls", "right"),
        ("quality", "right"),
        ("over time", "left"),
    ):
        quality.add_column(col, justify=just)  # type: ignore[arg-type]
    previous = None
    for q in rep.quality:
        s = series.get((q["task_type"], q["model"]), {})
        quality.add_row(
            q["task_type"] if q["task_type"] != previous else "",
            q["model"],
            f"{q['calls']:,}",
            _num(q["mean_quality"]),
            _spark([s.get(st) for st in starts], lo, hi),
        )
        previous = q["task_type"]
    console.print(quality)


@app.command()
def report(
    store: str | None = typer.Option(None, help=_STORE_HELP),
    since: str | None = typer.Option(None, help=_SINCE_HELP),
    until: str | None = typer.Option(None, help=_UNTIL_HELP),
    org: str | None = typer.Option(None, help="Only this org (tenant)."),
    task_type: str | None = typer.Option(None, help="Only this task type."),
    model: str | None = typer.Option(None, help="Only this model."),
    by: str = typer.Option("auto", help="Time buckets: auto, day, hour or minute."),
    format: str = typer.Option(
        "table", "--format", "-f", help="table, json, csv or html (one self-contained file)."
    ),
) -> None:
    """Cost, calls, tokens, latency, errors and quality by model, org, task type and time.

    Also the model mix and the quality of each (task type, model) over time.
    --format html writes one self-contained page (inline charts, no script) to mail.

    Examples: tally report | tally report --since 2025-06-01 --by day |
    tally report --org acme --task-type code-debug --format json > report.json |
    tally report --org acme --format html > report.html
    """
    from tally_core import reports

    fmt = _choice(format, ("table", "json", "csv", "html"))
    sv = None
    by_ = _choice(by, reports.TIME_BUCKETS, "--by")
    ledger = _open_ledger(store)
    try:
        rep = reports.report(
            ledger,
            since=since,
            until=until,
            org=org,
            task_type=task_type,
            model=model,
            by=by_,  # type: ignore[arg-type]
        )
        if fmt == "html" and model is None:  # savings compare every model of the slice
            sv = reports.savings(ledger, since=since, until=until, org=org, task_type=task_type)
    except TallyError as exc:
        raise _bad_input(exc) from None
    finally:
        ledger.close()
    if fmt == "html":
        from tally_core.report_html import render_html

        sys.stdout.write(render_html(rep, sv, where=str(_shown(store))))
    elif fmt == "json":
        _print_json(rep.to_dict())
    elif fmt == "csv":
        sys.stdout.write(_report_csv(rep))
    else:
        _print_report(rep, _shown(store))


_ROLLOUT_FIELDS = ("ts", "model", "org", "task_type", "action", "step", "share", "calls",
                   "quality", "incumbent_quality", "reason")


@app.command()
def rollouts(
    store: str | None = typer.Option(None, help=_STORE_HELP),
    model: str | None = typer.Option(None, help="Only this model's rollout."),
    org: str | None = typer.Option(None, help="Only this org (tenant)."),
    task_type: str | None = typer.Option(None, help="Only this task type."),
    format: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
) -> None:
    """Rollout transitions from the ledger: each step passed, each rollout done or rolled
    back, with the candidate's and the incumbents' quality at the step and the reason.

    Examples: tally rollouts | tally rollouts --model gpt-4.1-mini --format json
    """
    from tally_core.envelope import parse_task_type

    fmt = _choice(format, ("table", "json", "csv"))
    ledger = _open_ledger(store)
    try:
        task = parse_task_type(task_type) if task_type is not None else None
        rows = ledger.rollouts(model=model, org=org, task_type=task)
    except TallyError as exc:
        raise _bad_input(exc) from None
    finally:
        ledger.close()
    if fmt == "json":
        _print_json(rows)
        return
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_ROLLOUT_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
        return
    from rich.table import Table

    table = Table(title=f"Rollout transitions in {_shown(store)}")
    for head in ("when", "model", "org/task type", "action", "step", "calls", "quality",
                 "incumbents", "reason"):
        table.add_column(head)
    for r in rows:
        table.add_row(_when(r["ts"]), r["model"], f"{r['org']}/{r['task_type']}", r["action"],
                      f"{r['step'] + 1} ({r['share']:.0%})", str(r["calls"]),
                      _num(r["quality"]), _num(r["incumbent_quality"]), r["reason"])
    _console().print(table if rows else "no rollout transitions in this ledger")



_SHADOW_FIELDS = ("task_type", "candidate", "pairs", "primary_quality", "shadow_quality",
                  "quality_diff", "ci_low", "ci_high", "primary_cost_usd", "shadow_cost_usd",
                  "primary_latency_ms", "shadow_latency_ms")


@app.command("shadow-report")
def shadow_report(
    store: str | None = typer.Option(None, help=_STORE_HELP),
    since: str | None = typer.Option(None, help=_SINCE_HELP),
    until: str | None = typer.Option(None, help=_UNTIL_HELP),
    org: str | None = typer.Option(None, help="Only this org (tenant)."),
    task_type: str | None = typer.Option(None, help="Only this task type."),
    candidate: str | None = typer.Option(None, help="Only this shadowed model."),
    confidence: float = typer.Option(
        0.95, min=0.5, max=0.999, help="Confidence level of the intervals."
    ),
    format: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
) -> None:
    """Shadow tests from the ledger: each shadow copy paired with the call it copied.

    Per task type and candidate: the pairs, the paired quality difference
    (candidate minus the model that served) with its confidence interval, the
    mean cost per call and the median latency of both. --store is a store
    directory or a fleet's postgresql:// ledger, as for tally report.

    Examples: tally shadow-report | tally shadow-report --candidate gpt-4.1-mini -f json
    """
    from dataclasses import asdict

    from tally_core import reports
    from tally_core.ledger.query import LedgerQuery
    from tally_core.shadow import shadow_report as pair_shadows

    fmt = _choice(format, ("table", "json", "csv"))
    ledger = _open_ledger(store)
    try:
        # A shadow and its primary share org and task type, never the model: filter after.
        q = LedgerQuery.parse(since=since, until=until, org=org, task_type=task_type)
        pairs = [p for p in pair_shadows(ledger.rows(q), confidence)
                 if candidate is None or p.candidate == candidate]
    except TallyError as exc:
        raise _bad_input(exc) from None
    finally:
        ledger.close()
    if fmt == "json":
        _print_json([asdict(p) for p in pairs])
        return
    if fmt == "csv":
        sys.stdout.write(reports.csv_text([asdict(p) for p in pairs], _SHADOW_FIELDS))
        return
    from rich.table import Table

    console = _console()
    if not pairs:
        console.print(f"no shadow calls in {_shown(store)} for this selection")
        return
    table = Table(title=f"Shadow tests in {_shown(store)} (candidate vs served)",
                  title_justify="left")
    for col, just in (("task type", "left"), ("candidate", "left"), ("pairs", "right"),
                      ("quality c/s", "right"), ("q diff", "right"),
                      (f"{confidence:.0%} CI", "right"),
                      ("cost/call c/s", "right"), ("p50 ms c/s", "right")):
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for p in pairs:
        ci = "-" if p.ci_low is None or p.ci_high is None else (
            f"[{p.ci_low:+.3f}, {p.ci_high:+.3f}]")
        table.add_row(
            p.task_type, p.candidate, f"{p.pairs:,}",
            f"{_num(p.shadow_quality)}/{_num(p.primary_quality)}",
            _num(p.quality_diff, "+.3f"), ci,
            f"{_usd(p.shadow_cost_usd)}/{_usd(p.primary_cost_usd)}",
            f"{_num(p.shadow_latency_ms, '.0f')}/{_num(p.primary_latency_ms, '.0f')}",
        )
    console.print(table)
    console.print("[dim]c/s: the candidate's figure / the served model's, on the same calls. "
                  "q diff: candidate minus served quality; interval: paired t.[/dim]")

_SAVINGS_CSV = (
    "task_type",
    "calls",
    "cost_usd",
    "fallback_cost_usd",
    "saved_usd",
    "premium_quality",
    "parity_model",
    "parity_share",
    "at_parity_share",
    "at_floor_share",
    "routed_calls",
    "holdout_calls",
    "routed_quality",
    "holdout_quality",
    "quality_diff",
    "ci_low",
    "ci_high",
)


def _savings_rows(sv: Savings) -> list[dict[str, Any]]:
    rows = []
    for name, item in [(t.task_type, t) for t in sv.per_task] + [("total", sv)]:
        h = item.holdout
        rows.append(
            {
                "task_type": name,
                "calls": item.calls,
                "cost_usd": item.cost_usd,
                "fallback_cost_usd": item.fallback_cost_usd,
                "saved_usd": item.saved_usd,
                "premium_quality": getattr(item, "premium_quality", None),
                "parity_model": getattr(item, "parity_model", None),
                "parity_share": item.parity_share,
                "at_parity_share": item.at_parity_share,
                "at_floor_share": item.at_floor_share,
                "routed_calls": h.routed_calls,
                "holdout_calls": h.holdout_calls,
                "routed_quality": h.routed_quality,
                "holdout_quality": h.holdout_quality,
                "quality_diff": h.diff,
                "ci_low": h.ci_low,
                "ci_high": h.ci_high,
            }
        )
    return rows


def _forest(diff: float | None, lo: float | None, hi: float | None, r: float) -> Text:
    """The difference and its interval on a shared axis; │ marks zero."""
    from rich.text import Text

    width = 13
    if diff is None or lo is None or hi is None:
        return Text("")

    def pos(x: float) -> int:
        return min(width - 1, max(0, round((x + r) / (2 * r) * (width - 1))))

    chars = [" "] * width
    for i in range(pos(lo), pos(hi) + 1):
        chars[i] = "─"
    z = pos(0.0)
    chars[z] = "┼" if chars[z] == "─" else "│"
    chars[pos(diff)] = "●"
    style = "red" if hi < 0 else ("green" if lo > 0 else "")
    return Text("".join(chars), style=style)


def _print_savings(sv: Savings, where: Any) -> None:
    from rich.table import Table

    console = _console()
    if sv.empty:
        console.print(f"No calls in {where} for this selection.")
        return
    fb = sv.fallback or "the fallback"
    console.print(
        f"[bold]Cost {_usd(sv.cost_usd)}[/bold] for {sv.calls:,} calls, against "
        f"{_usd(sv.fallback_cost_usd)} had every call gone to {fb} at the prices in force: "
        f"[bold]saved {_usd(sv.saved_usd)} ({sv.saved_share:.1%})[/bold]."
    )
    if sv.unpriced_calls:
        console.print(
            f"[dim]{sv.unpriced_calls:,} calls had no token counts or no price for {fb}: "
            "counted at their actual cost.[/dim]"
        )
    console.print(
        f"Served by a cheaper model whose quality cleared the call's floor: "
        f"[bold]{sv.at_floor_share:.1%}[/bold]; within {sv.tolerance:g} of {fb}'s quality: "
        f"{sv.at_parity_share:.1%} ({sv.parity_share:.1%} by each task's cheapest such model)."
    )
    h = sv.holdout
    if h.holdout_calls == 0:
        console.print(
            "No holdout calls: create Tally with holdout=0.05 to measure quality against "
            f"a control group of calls sent to {fb} at random."
        )
    elif h.diff is None:
        console.print(f"Holdout: {h.holdout_calls:,} calls, too few per task type for an interval.")
    else:
        console.print(
            f"Holdout control group: {h.holdout_calls:,} calls sent to {fb} at random. "
            f"Quality routed {_num(h.routed_quality)} vs holdout {_num(h.holdout_quality)}: "
            f"difference [bold]{h.diff:+.3f}[/bold] "
            f"({h.confidence:.0%} CI {h.ci_low:+.3f} to {h.ci_high:+.3f})."
        )
    bounds = [
        abs(x) for t in sv.per_task for x in (t.holdout.ci_low, t.holdout.ci_high) if x is not None
    ]
    r = max(bounds, default=0.1) or 0.1
    table = Table(title=f"Per task type (against {fb})", title_justify="left")
    for col, just in (
        ("task type", "left"),
        ("calls", "right"),
        ("cost", "right"),
        ("saved", "right"),
        ("≥ floor", "right"),
        ("holdout", "right"),
        ("q diff", "right"),
        (f"{sv.holdout.confidence:.0%} CI", "right"),
        (f"-{r:.2f} │ +{r:.2f}", "center"),
    ):
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for t in sv.per_task:
        th = t.holdout
        ci = (
            "-"
            if th.ci_low is None or th.ci_high is None
            else f"[{th.ci_low:+.3f}, {th.ci_high:+.3f}]"
        )
        table.add_row(
            t.task_type,
            f"{t.calls:,}",
            _usd(t.cost_usd),
            f"{t.saved_usd / t.fallback_cost_usd:.0%}" if t.fallback_cost_usd else "-",
            f"{t.at_floor_share:.0%}",
            f"{th.holdout_calls:,}",
            _num(th.diff, "+.3f"),
            ci,
            _forest(th.diff, th.ci_low, th.ci_high, r),
        )
    console.print(table)
    console.print(
        "[dim]≥ floor: calls on a cheaper model whose mean quality on the task cleared "
        "the call's floor. holdout: calls in the control group. q diff: routed minus "
        f"holdout quality. Interval: {sv.method}.[/dim]"
    )


@app.command()
def savings(
    store: str | None = typer.Option(None, help=_STORE_HELP),
    since: str | None = typer.Option(None, help=_SINCE_HELP),
    until: str | None = typer.Option(None, help=_UNTIL_HELP),
    org: str | None = typer.Option(None, help="Only this org (tenant)."),
    task_type: str | None = typer.Option(None, help="Only this task type."),
    fallback: str | None = typer.Option(
        None, help="The premium model to compare with (default: the holdout calls' model)."
    ),
    tolerance: float = typer.Option(
        0.02, min=0.0, max=1.0, help="Quality within this of the fallback's counts as parity."
    ),
    confidence: float = typer.Option(
        0.95, min=0.5, max=0.999, help="Confidence level of the intervals."
    ),
    format: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
) -> None:
    """The proof: cost against always-the-fallback, quality against a holdout group.

    Actual cost against every call on the fallback model at the prices in force
    at each call's time; the share of calls a cheaper model served at the floor
    or at parity; and quality against the holdout control group
    (Tally(holdout=0.05)) with confidence intervals.

    Examples: tally savings | tally savings --since 2025-06-01 --tolerance 0.03 |
    tally savings --format json
    """
    from tally_core import reports

    fmt = _choice(format, ("table", "json", "csv"))
    ledger = _open_ledger(store)
    try:
        sv = reports.savings(
            ledger,
            fallback=fallback,
            since=since,
            until=until,
            org=org,
            task_type=task_type,
            tolerance=tolerance,
            confidence=confidence,
        )
    except TallyError as exc:
        raise _bad_input(exc) from None
    finally:
        ledger.close()
    if fmt == "json":
        _print_json(sv.to_dict())
    elif fmt == "csv":
        sys.stdout.write(reports.csv_text(_savings_rows(sv), _SAVINGS_CSV))
    else:
        _print_savings(sv, _shown(store))


@app.command()
def export(
    store: str | None = typer.Option(None, help=_STORE_HELP),
    format: str = typer.Option("jsonl", "--format", "-f", help="csv, json or jsonl."),
    output: str | None = typer.Option(
        None, "--output", "-o", help="File to write (default: standard output)."
    ),
    since: str | None = typer.Option(None, help=_SINCE_HELP),
    until: str | None = typer.Option(None, help=_UNTIL_HELP),
    org: str | None = typer.Option(None, help="Only this org (tenant)."),
    task_type: str | None = typer.Option(None, help="Only this task type."),
    model: str | None = typer.Option(None, help="Only this model."),
) -> None:
    """The call log, every column, as CSV, JSON or JSONL.

    Streamed, so any ledger size fits. CSV: an empty cell is NULL; tags and
    slugs are JSON lists. A progress bar shows on a terminal.

    Examples: tally export -f csv -o calls.csv | tally export --since 2025-06-01 |
    tally export -f json --org acme > acme.json
    """
    from rich.console import Console

    from tally_core import reports
    from tally_core.ledger.query import LedgerQuery

    fmt = _choice(format, reports.EXPORT_FORMATS)
    ledger = _open_ledger(store)
    try:
        f = LedgerQuery.parse(since=since, until=until, org=org, task_type=task_type, model=model)
        err = Console(stderr=True)
        to_terminal = output is None and sys.stdout.isatty()
        if err.is_terminal and not to_terminal:
            from rich.progress import Progress

            total = ledger.count(f)
            # No stdout redirect: the export itself may be going to stdout.
            with Progress(
                console=err, transient=True, redirect_stdout=False, redirect_stderr=False
            ) as progress:
                bar = progress.add_task("exporting", total=total)
                n = reports.export(
                    ledger,
                    output if output is not None else sys.stdout,
                    fmt,  # type: ignore[arg-type]
                    f,
                    progress=lambda k: progress.update(bar, completed=k),
                )
            err.print(f"{n:,} calls exported" + (f" to {output}" if output else ""))
        else:
            reports.export(
                ledger,
                output if output is not None else sys.stdout,
                fmt,  # type: ignore[arg-type]
                f,
            )
    except TallyError as exc:
        raise _bad_input(exc) from None
    except BrokenPipeError:
        # The reader went away (`tally export | head`): stop quietly.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except OSError as exc:
        where = output or "standard output"
        raise _fail(f"cannot write {where}: {exc.strerror or exc}", 1) from None
    finally:
        ledger.close()


def _source_kind(source: str) -> str:
    kind = source.split(":", 1)[0]
    if kind == "ledger":  # a price only the ledger knows, e.g. a user override
        return f"ledger ({_source_kind(source.split(':', 1)[1])})"
    return {
        "litellm-map": "litellm",
        "refreshed-map": "refreshed",
        "tally-snapshot": "snapshot",
    }.get(kind, kind)


@app.command()
def pricing(
    store: str | None = typer.Option(None, help=_STORE_HELP),
    models: str | None = typer.Option(
        None, help="Comma-separated models (default: every model the store's ledger knows)."
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="Download LiteLLM's published price map into the store first."
    ),
    url: str | None = typer.Option(None, help="Price map to download (default: LiteLLM's)."),
    timeout: float = typer.Option(10.0, min=0.1, help="Download timeout in seconds."),
    format: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
) -> None:
    """The model catalog as Tally sees it, and where each price came from.

    Prices per million tokens, context window and tool support, from LiteLLM's
    installed map, a map refreshed into the store, Tally's snapshot, or a user
    override.

    --refresh downloads LiteLLM's price map into the store, records each price
    change with its date in the ledger (calls keep the price of their time, so
    past reports do not change), and Tally instances created on the store
    afterwards use it.

    Examples: tally pricing | tally pricing --models gpt-4o,claude-haiku-4-5 |
    tally pricing --refresh
    """
    from dataclasses import asdict

    from tally_core import reports
    from tally_core.catalog import PRICE_MAP_URL, store_price_map
    from tally_core.ledger import Ledger

    fmt = _choice(format, ("table", "json", "csv"))
    where, named = _store_path(store)
    wanted = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if not where.is_dir() and (named or refresh or wanted is None):
        raise _fail(f"no Tally store at {where}; pass --store DIR or set TALLY_HOME")
    ledger_path = where / _LEDGER
    ledger: Ledger | None = None
    changes: list[dict[str, Any]] = []
    try:
        if refresh:
            ledger = Ledger(ledger_path) if ledger_path.is_file() else None
            changes = reports.refresh_prices(
                where, ledger, url=url or PRICE_MAP_URL, timeout=timeout
            )
            if ledger is not None:
                ledger.close()
        ledger = Ledger(ledger_path, readonly=True) if ledger_path.is_file() else None
        if wanted is None and ledger is None:
            raise _fail(f"no ledger in {where}: pass --models to look models up")
        rows = reports.pricing(wanted, ledger=ledger, price_map=store_price_map(where))
    except TallyError as exc:
        raise _fail(str(exc), 1) from None
    finally:
        if ledger is not None:
            ledger.close()
    if fmt == "json":
        _print_json(
            {
                "models": [asdict(r) for r in rows],
                "refreshed": refresh,
                "changes": changes,
            }
        )
        return
    if fmt == "csv":
        cols = tuple(f for f in asdict(rows[0])) if rows else ("model",)
        sys.stdout.write(reports.csv_text([asdict(r) for r in rows], cols))
        return
    from rich.table import Table

    console = _console()
    if refresh:
        console.print(
            f"Price map saved to {StoreDir(where).price_map}; "
            f"{len(changes)} price change(s) recorded in the ledger."
        )
        for c in changes:
            old = (
                "new"
                if c["old_input_cost_per_mtok"] is None
                else f"${c['old_input_cost_per_mtok']:g}/${c['old_output_cost_per_mtok']:g}"
            )
            console.print(
                f"  {c['model']}: {old} -> ${c['input_cost_per_mtok']:g}/"
                f"${c['output_cost_per_mtok']:g} per M tokens from {_when(c['ts'])} UTC"
            )
    table = Table(title="Model catalog (USD per million tokens)", title_justify="left")
    for col, just in (
        ("model", "left"),
        ("provider", "left"),
        ("input", "right"),
        ("output", "right"),
        ("context", "right"),
        ("tools", "left"),
        ("source", "left"),
        ("in force since", "left"),
    ):
        table.add_column(col, justify=just, no_wrap=col != "provider")  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r.model,
            r.provider or "-",
            _num(r.input_cost_per_mtok, "g"),
            _num(r.output_cost_per_mtok, "g"),
            "-" if r.context_window is None else f"{r.context_window:,}",
            "-" if r.supports_tools is None else ("yes" if r.supports_tools else "no"),
            _source_kind(r.source),
            _when(r.recorded_since)[:16],
        )
    console.print(table)
    notes = {
        "litellm": "LiteLLM's installed price map, read as a data file",
        "refreshed": "the map `tally pricing --refresh` saved in the store",
        "snapshot": "the snapshot shipped with Tally",
    }
    for src in sorted({r.source for r in rows if ":" in r.source and r.source[:7] != "ledger:"}):
        kind = _source_kind(src)
        console.print(f"[dim]{kind}: {notes.get(kind, kind)} ({src.split(':', 1)[1]})[/dim]")
    console.print(
        "[dim]in force since: when the store's ledger recorded this price (UTC); calls keep "
        "the price in force at their time.[/dim]"
    )


# -- dashboard (tally_core.dashboard; the `dashboard` extra) ---------------------


@app.command()
def dashboard(
    store: str | None = typer.Option(None, help=_STORE_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless --allow-remote)."),
    port: int = typer.Option(8765, min=1, max=65535, help="Port to listen on."),
    org: str | None = typer.Option(
        None, help="Serve this org only (default: every org, one at a time)."
    ),
    allow_remote: bool = typer.Option(
        False,
        "--allow-remote",
        help="Allow a non-loopback --host (no login: anyone who reaches it reads the call log).",
    ),
    fallback: str | None = typer.Option(
        None, help="The premium model savings compare with (default: the holdout calls' model)."
    ),
    state: str | None = typer.Option(
        None,
        help="Learned state for the task-type pages: a directory or a redis:// URL "
        "(default: the store directory's; none for a postgresql:// ledger).",
    ),
) -> None:
    """A local, read-only web dashboard over the store: overview, task types, calls, savings.

    --store is a store directory or a fleet's postgresql:// ledger, as for tally report.
    Also a JSON API (/api/report, /api/savings, /api/calls, /api/stats/TASK).
    Needs the dashboard extra: pip install 'tally-router[dashboard]'.

    Examples: tally dashboard | tally dashboard --store ./tally-store --port 9000 |
    tally dashboard --store postgresql://tally@db/tally --state redis://cache:6379/0
    """
    from tally_core import dashboard as dash
    from tally_core.ledger import is_postgres_url

    where: Any = store if is_postgres_url(store) else _store_path(store)[0]
    try:
        dash.check_host(host, allow_remote=allow_remote)
        dash.require_extra()
    except TallyError as exc:
        raise _bad_input(exc) from None
    except ImportError as exc:
        raise _fail(str(exc)) from None
    if not is_postgres_url(where) and not (where / _LEDGER).is_file():
        raise _fail(f"no Tally store at {where} (no {_LEDGER}); pass --store DIR or set TALLY_HOME")
    try:
        dash.serve(
            where, host=host, port=port, org=org, allow_remote=allow_remote, fallback=fallback,
            state=state,
        )
    except TallyError as exc:
        raise _fail(str(exc)) from None


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    }
)
def bench(ctx: typer.Context) -> None:
    """Benchmarks: tally bench overhead|routing ... (see tally bench routing --help).

    overhead: route/telemetry latency, throughput, import time. routing:
    routers compared on a simulated workload. Arguments go to
    python -m tally_core.eval.bench; with tally_litellm installed, routing includes
    LiteLLM's Adaptive Router.

    Examples: tally bench overhead --quick | tally bench routing --calls 5000 |
    tally bench routing --help
    """
    from tally_core.eval import bench as bench_mod

    extra: Any = None
    if ctx.args[:1] != ["overhead"] and not {"-h", "--help"} & set(ctx.args):
        # Routers adapters add (LiteLLM's Adaptive Router), loaded only here:
        # they import their library, which `tally --help` must not pay for.
        extra = {k: v for _, routers in _plugins("tally.bench_routers") for k, v in routers.items()}
    raise typer.Exit(bench_mod.main(ctx.args, extra=extra, prog="tally bench"))


def main() -> None:
    try:
        app()
    except TallyError as exc:
        print(f"tally: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
