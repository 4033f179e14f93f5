"""``tally demo``: the README's first command, run as a user runs it, and its driver.

The demo sends a simulated workload through a real ``litellm.Router`` with
``TallyStrategy`` installed (mock responses, no network). These tests run the
command in a subprocess and check what it prints and what it stored, then
check ``tally_litellm.demo`` against the simulator's own figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("litellm")

from tally_core import Tally  # noqa: E402
from tally_core.eval.sim import load_scenario  # noqa: E402
from tally_core.home import StoreDir
from tally_core.ledger import Ledger  # noqa: E402
from tally_core.ledger.query import LedgerQuery
from tally_litellm.demo import run_demo  # noqa: E402

SCENARIO = load_scenario("seed-landscape")
MODELS = set(SCENARIO.model_names())
PHASES = {"calibrate", "explore", "exploit", "fallback"}

COST = re.compile(
    r"Cost: \$([\d,]+\.\d\d) with Tally vs \$([\d,]+\.\d\d) always on (\S+): "
    r"saved \$(-?[\d,]+\.\d\d) \((-?\d+)%\)\."
)
QUALITY = re.compile(
    r"Quality held: ([\d.]+)% of calls met their task's floor after warm-up "
    r"\(([\d.]+)% below\); mean true quality ([\d.]+) vs ([\d.]+) always on (\S+)\."
)


def _tally(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TALLY_HOME": str(home)}
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-m", "tally_core.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _usd(text: str) -> float:
    return float(text.replace(",", ""))


def test_demo_runs_the_workload_through_the_router_and_reports(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # The store already holds a real workload's learning: the demo must not touch it.
    with Tally(["gpt-4o-mini", "gpt-4o"], fallback="gpt-4o", store=str(store)) as app:
        for _ in range(7):
            app.telemetry(app.route(task_type="classification"), quality=0.9)
        assert app.flush(10)
        before = app.stats("classification")
    p = _tally("demo", "--calls", "400", "--store", str(store), "--seed", "2", home=tmp_path)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "Traceback" not in p.stderr
    # LiteLLM's own logging and help banners stay out of the demo's output.
    assert "LiteLLM" not in p.stderr and "Give Feedback" not in out + p.stderr
    assert "through a litellm.Router with Tally installed" in out
    assert "\x1b[" not in out  # piped: no progress bar, no colours

    # The table: one row per task type, each naming a pool model, a phase and
    # a confidence.
    assert "What Tally learned (per task type)" in out
    for task in SCENARIO.tasks:
        row = next((ln for ln in out.splitlines() if f" {task} " in ln), None)
        assert row is not None, f"no row for {task}:\n{out}"
        cells = [c.strip() for c in re.split(r"[│┃]", row) if c.strip()]
        _, floor, model, phase, confidence, share = cells
        assert float(floor) == SCENARIO.tasks[task].floor
        assert model in MODELS and phase in PHASES
        assert 0.0 <= float(confidence) <= 1.0
        assert 0 <= int(share.rstrip("%")) <= 100

    cost = COST.search(out)
    assert cost is not None, out
    ours, best, fallback, saved, pct = cost.groups()
    assert fallback == SCENARIO.fallback
    assert 0 < _usd(ours) < _usd(best)
    assert _usd(saved) > 0
    assert _usd(saved) == pytest.approx(_usd(best) - _usd(ours), abs=0.011)
    assert int(pct) == round(100 * _usd(saved) / _usd(best))

    quality = QUALITY.search(out)
    assert quality is not None, out
    met, below, q_ours, q_best, _ = quality.groups()
    assert float(met) + float(below) == pytest.approx(100.0, abs=0.011)
    assert float(met) >= 90.0
    assert 0.8 <= float(q_ours) <= float(q_best) <= 1.0

    # Every call reached the store's ledger through the LiteLLM callback,
    # with the scenario's token counts, LiteLLM's price and the scorer's grade.
    ledger = Ledger(StoreDir(store).ledger, readonly=True)
    rows = list(ledger.rows(LedgerQuery(org="demo")))
    assert ledger.count() == 407
    ledger.close()
    assert len(rows) == 400
    # A 5% control group went to the fallback at random, for `tally savings`.
    held = [r for r in rows if r["holdout"]]
    assert 5 <= len(held) <= 40 and {r["model"] for r in held} == {SCENARIO.fallback}
    with Tally(["gpt-4o-mini", "gpt-4o"], fallback="gpt-4o", store=str(store)) as app:
        assert app.stats("classification") == before
    sv = _tally("savings", "--org", "demo", "--store", str(store), home=tmp_path)
    assert sv.returncode == 0, sv.stderr
    assert "Holdout control group" in sv.stdout
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in rows)
    assert all(r["quality"] is not None and r["success"] for r in rows)
    assert {r["model"] for r in rows} <= MODELS
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(_usd(ours), abs=0.011)


def test_demo_with_an_unknown_scenario_fails_in_one_line(tmp_path: Path) -> None:
    p = _tally(
        "demo", "--calls", "100", "--scenario", "nope", "--store", str(tmp_path), home=tmp_path
    )
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "seed-landscape" in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_run_demo_is_cheaper_than_always_best_and_holds_the_floor() -> None:
    # Over seeds 1-6 at 1500 calls: cost 0.078-0.085 of always-best, floor
    # violations after warm-up 0, 7.4, 0.6, 0, 5.7, 9.7% (reasoning's ~150
    # calls: learning in cost order rules out gpt-4o, 3 points below its
    # floor, before it tries the dearer model that clears, and a lucky start
    # gets gpt-4o exploited for a while), mean true quality 0.872-0.879
    # against a traffic-weighted floor of 0.815, 1051-1137 exploit calls: 1500 calls
    # are the policy's learning stretch (over 20,000 calls the mean is
    # 0.36%, see BENCHMARKS.md). Telemetry arrives on LiteLLM's threads, so
    # runs vary.
    r = run_demo(SCENARIO, calls=1500, seed=3)
    assert r.routed.calls == r.baseline.calls == 1500
    assert r.routed.cost_usd < 0.25 * r.baseline.cost_usd
    assert r.saved_usd == pytest.approx(r.baseline.cost_usd - r.routed.cost_usd)
    assert r.routed.violation_rate < 0.06
    assert r.routed.mean_quality > 0.85
    assert sum(r.routed.phases.values()) == 1500 and r.routed.phases["exploit"] > 800
    assert r.failed_calls == 0 and r.adapter_errors == {}


def test_run_demo_outage_fails_calls_through_litellm_as_the_scenario_says() -> None:
    r = run_demo("outage", calls=1000, seed=1)
    # The mock exception hits exactly the calls the simulator counts as errors.
    assert r.failed_calls == r.routed.errors > 0
    assert r.routed.cost_usd < 0.5 * r.baseline.cost_usd
    assert r.adapter_errors == {}


def test_prepare_hands_the_router_the_draw_simulate_scores() -> None:
    """The ``prepare`` hook the driver relies on: ``SimCall.outcome(model)`` is
    the very outcome ``observe`` then gets, for whichever model was chosen."""
    from tally_core.eval.sim import FixedRouter, SimCall, simulate

    class Probe(FixedRouter):
        def __init__(self) -> None:
            super().__init__("probe", "gemini-2.5-flash-lite")
            self.calls: list[SimCall] = []
            self.seen: list[tuple[float | None, bool, float, int, int]] = []

        def prepare(self, call: SimCall) -> None:
            self.calls.append(call)

        def observe(self, task, model, quality, errored, it, ot, latency_ms, cost_usd) -> None:
            self.seen.append((quality, errored, latency_ms, it, ot))

    probe = Probe()
    res = simulate(load_scenario("outage"), [probe], seed=4, calls=400)
    assert len(probe.calls) == len(probe.seen) == 400
    for call, seen in zip(probe.calls, probe.seen, strict=True):
        assert (*call.outcome(probe.model), call.input_tokens, call.output_tokens) == seen
        assert call.envelope["task_type"] == call.task.name
    assert res["probe"].errors == sum(errored for _, errored, *_ in probe.seen) > 0


def test_demo_without_litellm_drives_tally_directly(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import tally_core.cli as cli

    monkeypatch.setattr(cli, "_demo_runner", lambda: (None, "litellm is not installed"))
    store = tmp_path / "store"
    res = CliRunner().invoke(cli.app, ["demo", "--calls", "400", "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "Note: litellm is not installed; routing with Tally directly" in res.output
    cost = COST.search(res.output)
    assert cost is not None and _usd(cost.group(4)) > 0
    ledger = Ledger(StoreDir(store).ledger, readonly=True)
    assert ledger.count() == 400 and {r["org"] for r in ledger.rows()} == {"demo"}
    ledger.close()
