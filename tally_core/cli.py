"""The ``tally`` command.

``tally demo`` runs a simulated workload through Tally on the embedded store
and prints what it learned and the money saved; ``tally stats TASK`` shows the
bandit's view of a task type.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from tally_core.errors import TallyError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Tally: route each LLM call to the cheapest model that is good enough.",
)


class _DemoRouter:
    """Drives a real Tally (any store) from the simulator."""

    name = "tally"

    def __init__(self, tally: Any) -> None:
        self.tally = tally
        self._last: Any = None
        self.calls = 0

    def choose(self, task: Any, envelope: dict[str, Any], pool: Any) -> str:
        self._last = self.tally.route(envelope)
        return str(self._last.model)

    def observe(
        self,
        task: Any,
        model: str,
        quality: float | None,
        errored: bool,
        input_tokens: int,
        output_tokens: int,
        latency_ms: float,
        cost_usd: float,
    ) -> None:
        self.tally.telemetry(
            self._last,
            quality=quality,
            success=not errored,
            error="ProviderError" if errored else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            cost_usd=cost_usd,
        )
        self.calls += 1
        if self.calls % 25 == 0:
            # Traffic in the demo comes far faster than in life: let the
            # worker catch up now and then so each route sees recent outcomes.
            self.tally.flush(5.0)


class _Always:
    def __init__(self, model: str) -> None:
        self.name, self.model = "always-fallback", model

    def choose(self, task: Any, envelope: dict[str, Any], pool: Any) -> str:
        return self.model

    def observe(self, *args: Any) -> None:
        pass


@app.command()
def demo(
    calls: int = typer.Option(4000, min=100, max=1_000_000, help="Simulated calls."),
    scenario: str = typer.Option("seed-landscape", help="Shipped scenario name or JSON path."),
    store: str = typer.Option(None, help="State directory (default $TALLY_HOME or ~/.tally)."),
    seed: int = typer.Option(1, help="Seed for the workload and the router."),
    fresh: bool = typer.Option(True, help="Forget what the store learned before the run."),
) -> None:
    """Route a simulated workload, learn from its outcomes, show the savings.

    Example: tally demo --calls 2000 --store /tmp/tally-demo
    """
    from rich.console import Console
    from rich.table import Table

    from tally_core.router import Tally, default_home
    from tally_core.sim import load_scenario, simulate

    console = Console()
    try:
        sc = load_scenario(scenario)
    except TallyError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scenario") from None
    where = store or default_home()
    tally = Tally([m for m in sc.models], fallback=sc.fallback, store=where, seed=seed)
    if fresh:
        tally.store.reset()
        tally.refresh()
    router = _DemoRouter(tally)
    console.print(f"Routing {calls} simulated calls ({sc.name}) through Tally; store: {where}")
    if console.is_terminal:
        from rich.progress import Progress

        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("routing", total=calls)
            res = simulate(
                sc,
                [_Always(sc.fallback), router],
                seed=seed,
                calls=calls,
                progress=lambda i: progress.update(bar, completed=i),
            )
    else:
        res = simulate(sc, [_Always(sc.fallback), router], seed=seed, calls=calls)
    tally.flush(10.0)
    base, ours = res["always-fallback"], res["tally"]

    table = Table(title="What Tally learned (per task type)")
    for col in ("task type", "floor", "routes to", "phase", "confidence", "share to cheapest"):
        table.add_column(col)
    cheapest = min(tally.catalog, key=lambda s: s.input_cost_per_mtok or 0.0).name
    for name, spec in sc.tasks.items():
        d = tally.route(task_type=name, quality_floor=spec.floor, **spec.envelope)
        pt = ours.per_task[name]
        share = pt["models"].get(cheapest, 0) / max(pt["calls"], 1)
        floor = "parity" if spec.floor is None else f"{spec.floor:.2f}"
        table.add_row(name, floor, d.model, d.phase, f"{d.confidence:.2f}", f"{share:.0%}")
    console.print(table)
    saved = base.cost_usd - ours.cost_usd
    console.print(
        f"Cost: ${ours.cost_usd:,.2f} with Tally vs ${base.cost_usd:,.2f} always on "
        f"{sc.fallback}: saved ${saved:,.2f} ({saved / base.cost_usd:.0%})."
    )
    console.print(
        f"Quality held: mean true quality {ours.mean_quality:.3f} vs {base.mean_quality:.3f}; "
        f"calls below the floor after warm-up: {ours.violation_rate:.2%}."
    )
    tally.close()


@app.command()
def stats(
    task_type: str = typer.Argument(..., help="Task type, e.g. code-debug."),
    store: str = typer.Option(None, help="State directory (default $TALLY_HOME or ~/.tally)."),
    models: str = typer.Option(
        None, help="Comma-separated pool (default: every model the store has seen)."
    ),
    floor: float = typer.Option(None, min=0.0, max=1.0, help="Quality floor to judge against."),
    org: str = typer.Option("default", help="Org (tenant)."),
) -> None:
    """The bandit's view of a task type: per model calls, quality, confidence, phase.

    Example: tally stats code-debug --floor 0.8
    """
    from rich.console import Console
    from rich.table import Table

    from tally_core.envelope import normalise_task_type
    from tally_core.router import Tally, default_home
    from tally_core.stores.disk import DiskStore

    where = store or default_home()
    try:
        tt = normalise_task_type(task_type)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TASK_TYPE") from None
    if models:
        pool = [m.strip() for m in models.split(",") if m.strip()]
    else:
        ds = DiskStore(where)
        state = ds.load().get((org, tt))
        ds.close()
        if not state:
            typer.echo(f"no learned state for {tt!r} (org {org!r}) in {where}", err=True)
            raise typer.Exit(1)
        pool = sorted(state["cells"].get("*", {}))
    try:
        with Tally(pool, store=where) as tally:
            rows = tally.stats(tt, org=org, quality_floor=floor)
    except TallyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
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
    Console().print(table)


def main() -> None:
    try:
        app()
    except TallyError as exc:
        print(f"tally: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
