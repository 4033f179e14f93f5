"""``tally shadow-report``: the shadow tests a real Tally wrote to its store, read back by
the CLI with the figures computed here independently (paired differences, t interval)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tally_core import ModelSpec, Tally
from tally_core.cli import app
from tally_core.shadow import ShadowCopies

runner = CliRunner()
POOL = [ModelSpec(name="cheap", input_cost_per_mtok=1.0, output_cost_per_mtok=1.0),
        ModelSpec(name="premium", input_cost_per_mtok=10.0, output_cost_per_mtok=10.0)]
N = 12
T_975_DF11 = 2.200985  # Student's t, 97.5th percentile, 11 degrees of freedom


def primary_q(i: int) -> float:
    return 0.9 - 0.01 * (i % 3)


def shadow_q(i: int) -> float:
    return 0.5 + 0.05 * (i % 4)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N calls of qa-simple served by premium, each copied to cheap (the adapters' own
    ShadowCopies), and 3 summarisation calls with copies too; through the telemetry worker."""
    where = tmp_path_factory.mktemp("shadow") / "store"
    tally = Tally(POOL, fallback="premium", store=str(where), seed=3)
    copies = ShadowCopies(tally)
    try:
        for _ in range(40):  # cheap is known to fail the floor: callers get premium
            tally.telemetry(model="cheap", task_type="qa-simple", quality=0.1)
            tally.telemetry(model="cheap", task_type="summarisation", quality=0.1)
        assert tally.flush(10.0)
        tally.shadow("cheap", sample=1.0)
        for task, n in (("qa-simple", N), ("summarisation", 3)):
            for i in range(n):
                d = tally.route(task_type=task, quality_floor=0.8)
                assert d.model == "premium"
                tally.telemetry(d, quality=primary_q(i), input_tokens=1000, output_tokens=500,
                                latency_ms=300.0 + 10 * i)
                copy = copies.plan(d, served=d.model)
                assert copy is not None and copy.model == "cheap"
                copies.record(copy, time.perf_counter(), quality=shadow_q(i),
                              input_tokens=1000, output_tokens=500, latency_ms=100.0 + 5 * i)
        assert tally.flush(10.0)
    finally:
        copies.close()
        tally.close()
    return where


def _run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_json_has_the_paired_figures(store: Path) -> None:
    res = _run("shadow-report", "--store", str(store), "-f", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["task_type"], r["candidate"], r["pairs"]) for r in rows] == [
        ("qa-simple", "cheap", N), ("summarisation", "cheap", 3)]
    qa = rows[0]
    diffs = [shadow_q(i) - primary_q(i) for i in range(N)]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = T_975_DF11 * sd / math.sqrt(N)
    assert qa["quality_diff"] == pytest.approx(mean) == pytest.approx(-0.315)
    assert qa["ci_low"] == pytest.approx(mean - half, abs=1e-4)
    assert qa["ci_high"] == pytest.approx(mean + half, abs=1e-4)
    assert qa["primary_quality"] == pytest.approx(statistics.fmean(map(primary_q, range(N))))
    assert qa["shadow_quality"] == pytest.approx(statistics.fmean(map(shadow_q, range(N))))
    # 1000 in + 500 out tokens at $10 / $1 per million
    assert qa["primary_cost_usd"] == pytest.approx(0.015)
    assert qa["shadow_cost_usd"] == pytest.approx(0.0015)
    assert qa["primary_latency_ms"] == pytest.approx(statistics.median(
        300.0 + 10 * i for i in range(N)))  # 355
    assert qa["shadow_latency_ms"] == pytest.approx(statistics.median(
        100.0 + 5 * i for i in range(N)))  # 127.5


def test_filters_confidence_and_csv(store: Path) -> None:
    res = _run("shadow-report", "--store", str(store), "-f", "csv", "--task-type", "qa_simple")
    assert res.exit_code == 0, res.output
    (row,) = list(csv.DictReader(io.StringIO(res.stdout)))
    assert row["task_type"] == "qa-simple" and int(row["pairs"]) == N
    assert float(row["quality_diff"]) == pytest.approx(-0.315)
    wide = json.loads(_run("shadow-report", "--store", str(store), "-f", "json",
                           "--confidence", "0.99", "--task-type", "qa-simple").stdout)[0]
    assert wide["ci_high"] - wide["ci_low"] > float(row["ci_high"]) - float(row["ci_low"])
    res = _run("shadow-report", "--store", str(store), "-f", "json", "--candidate", "premium")
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    res = _run("shadow-report", "--store", str(store), "-f", "json", "--org", "other")
    assert res.exit_code == 0 and json.loads(res.stdout) == []


def test_table_shows_each_test(store: Path) -> None:
    res = _run("shadow-report", "--store", str(store))
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stdout.splitlines() if "qa-simple" in x)
    assert "cheap" in line and "-0.315" in line and "$0.0015/$0.0150" in line
    assert "128/355" in line  # median latency (127.5 rounds to 128)


def test_bad_input_is_one_line(store: Path, tmp_path: Path) -> None:
    res = _run("shadow-report", "--store", str(store), "-f", "xml")
    assert res.exit_code == 2 and "--format: must be one of table, json, csv" in res.output
    res = _run("shadow-report", "--store", str(store), "--since", "yesterday")
    assert res.exit_code == 2 and "--since" in res.output
    res = _run("shadow-report", "--store", str(tmp_path / "nothing"))
    assert res.exit_code == 2 and "no Tally store at" in res.output
