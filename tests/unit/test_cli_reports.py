"""The report commands: exit codes, one-line errors, JSON that equals the API's figures."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tally_core import Ledger, reports
from tally_core.cli import app
from tally_core.home import StoreDir
from tests.unit.test_reports import KNOWN, _fake_map

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    where = tmp_path / "store"
    led = Ledger(StoreDir(where).ledger)
    led.append(KNOWN)
    led.sync_prices([("gpt-4o", 2.5, 10.0, "litellm-map:x"), ("gpt-4o-mini", 0.15, 0.6, "user")])
    led.close()
    return where


def _run(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), env=env)


def _json(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def test_report_json_equals_the_api(store: Path) -> None:
    res = _run("report", "--store", str(store), "--format", "json", "--by", "day")
    assert res.exit_code == 0, res.output
    api = reports.report(Ledger(StoreDir(store).ledger, readonly=True), by="day")
    assert json.loads(res.stdout) == _json(api.to_dict())
    assert json.loads(res.stdout)["totals"]["calls"] == 5


def test_report_filters_and_formats(store: Path) -> None:
    res = _run("report", "--store", str(store), "-f", "json", "--org", "acme", "--task-type",
               "summarization", "--since", "2025-06-01", "--until", "2025-06-01")  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["totals"]["calls"] == 1
    assert data["filters"] == {"org": "acme", "task_type": "summarisation", "model": None}
    res = _run("report", "--store", str(store), "--format", "csv", "--by", "day")
    assert res.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    total = next(r for r in rows if r["section"] == "total")
    assert int(total["calls"]) == 5 and float(total["cost_usd"]) == pytest.approx(0.00847)
    mix = [(r["bucket"], r["model"], r["calls"]) for r in rows if r["section"] == "mix"]
    assert ("2025-06-01", "gpt-4o-mini", "2") in mix
    res = _run("report", "--store", str(store))
    assert res.exit_code == 0
    for title in ("Cost by model", "Cost by task type", "Model mix", "Quality by task type"):
        assert title in res.stdout
    assert "█" in res.stdout  # bars


def test_savings_json_equals_the_api(store: Path) -> None:
    res = _run("savings", "--store", str(store), "--format", "json")
    assert res.exit_code == 0, res.output
    api = reports.savings(Ledger(StoreDir(store).ledger, readonly=True))
    data = json.loads(res.stdout)
    assert data == _json(api.to_dict())
    assert data["fallback"] == "gpt-4o" and data["calls"] == 5
    res = _run("savings", "--store", str(store))
    assert res.exit_code == 0 and "saved" in res.stdout and "Per task type" in res.stdout
    res = _run("savings", "--store", str(store), "-f", "csv", "--fallback", "gpt-4o")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows[-1]["task_type"] == "total"
    assert float(rows[-1]["saved_usd"]) == pytest.approx(api.saved_usd)


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_export_streams_every_row(store: Path, tmp_path: Path, fmt: str) -> None:
    res = _run("export", "--store", str(store), "--format", fmt)
    assert res.exit_code == 0, res.output
    original = list(Ledger(StoreDir(store).ledger).rows())
    assert list(reports.read_export(io.StringIO(res.stdout), fmt)) == original  # type: ignore[arg-type]
    out = tmp_path / f"out.{fmt}"
    res = _run("export", "--store", str(store), "-f", fmt, "-o", str(out), "--model", "gpt-4o")
    assert res.exit_code == 0 and res.stdout == ""  # quiet when not on a terminal
    back = list(reports.read_export(out, fmt))  # type: ignore[arg-type]
    assert [r["event_id"] for r in back] == ["e3", "e5"]


def test_default_store_is_tally_home(store: Path) -> None:
    res = _run("report", "-f", "json", env={"TALLY_HOME": str(store)})
    assert res.exit_code == 0 and json.loads(res.stdout)["totals"]["calls"] == 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["report", "--since", "last tuesday"], "--since: not an ISO date"),
        (["savings", "--until", "2025-13-01"], "--until: not an ISO date"),
        (["export", "--since", "x"], "--since"),
        (["report", "--format", "xml"], "--format: must be one of table, json, csv"),
        (["export", "--format", "parquet"], "--format: must be one of csv, json, jsonl"),
        (["report", "--by", "fortnight"], "--by: must be one of"),
        (["report", "--task-type", "Not A Slug!"], "--task-type"),
    ],
)
def test_bad_input_is_one_line(store: Path, args: list[str], needle: str) -> None:
    res = _run(*args, "--store", str(store))
    assert res.exit_code == 2
    assert res.stdout == ""
    assert needle in res.stderr and res.stderr.count("\n") == 1 and res.stderr.startswith("tally:")


@pytest.mark.parametrize("command", ["report", "savings", "export", "pricing"])
def test_unknown_store_is_one_line(tmp_path: Path, command: str) -> None:
    res = _run(command, "--store", str(tmp_path / "nope"))
    assert res.exit_code == 2
    assert "no Tally store at" in res.stderr and res.stderr.count("\n") == 1


def test_empty_store_gives_an_empty_report(tmp_path: Path) -> None:
    Ledger(StoreDir(tmp_path).ledger).close()
    for args in (["report"], ["savings"]):
        res = _run(*args, "--store", str(tmp_path))
        assert res.exit_code == 0 and "No calls" in res.stdout
    res = _run("report", "--store", str(tmp_path), "-f", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["totals"]["calls"] == 0
    res = _run("savings", "--store", str(tmp_path), "-f", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["calls"] == 0
    res = _run("export", "--store", str(tmp_path), "-f", "json")
    assert res.exit_code == 0 and json.loads(res.stdout) == []


def test_pricing_shows_sources(store: Path) -> None:
    res = _run("pricing", "--store", str(store), "--format", "json")
    assert res.exit_code == 0, res.output
    models = {m["model"]: m for m in json.loads(res.stdout)["models"]}
    assert set(models) == {"gpt-4o", "gpt-4o-mini"}
    assert models["gpt-4o"]["input_cost_per_mtok"] == pytest.approx(2.5)
    assert models["gpt-4o"]["context_window"] == 128_000
    assert models["gpt-4o"]["source"].split(":")[0] in ("litellm-map", "tally-snapshot")
    assert models["gpt-4o"]["recorded_since"] is not None
    res = _run("pricing", "--store", str(store), "--models", "gpt-4o,custom-llm")
    assert res.exit_code == 0 and "custom-llm" in res.stdout and "unknown" in res.stdout


def test_pricing_refresh_from_a_local_file(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_bytes(_fake_map(**{"gpt-4o": (1.25, 5.0), "gpt-4o-mini": (0.15, 0.6)}))
    res = _run("pricing", "--store", str(store), "--refresh", "--url", path.as_uri(), "-f", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    changes = {c["model"]: c for c in data["changes"]}
    assert set(changes) == {"gpt-4o"}  # gpt-4o-mini's price in force is a user override
    assert changes["gpt-4o"]["old_input_cost_per_mtok"] == 2.5
    models = {m["model"]: m for m in data["models"]}
    assert models["gpt-4o"]["input_cost_per_mtok"] == 1.25
    assert models["gpt-4o"]["source"].startswith("refreshed-map:")
    assert StoreDir(store).price_map.is_file()
    # The calls before the refresh keep their price: savings do not move.
    before = reports.savings(Ledger(StoreDir(store).ledger), fallback="gpt-4o")
    assert before.fallback_cost_usd == pytest.approx(0.0035 + 0.007 + 0.0035 + 0.014 + 0.0035)


def test_pricing_refresh_offline_is_one_line(store: Path) -> None:
    res = _run("pricing", "--store", str(store), "--refresh", "--timeout", "2",
               "--url", "http://127.0.0.1:9/map.json")  # fmt: skip
    assert res.exit_code == 1
    assert res.stderr.startswith("tally: cannot download the price map")
    assert res.stderr.count("\n") == 1
    assert not StoreDir(store).price_map.exists()


def test_help_has_examples() -> None:
    for command in ("report", "savings", "export", "pricing", "bench"):
        res = _run(command, "--help")
        assert res.exit_code == 0 and "Examples" in res.stdout
        assert command == "bench" or "--store" in res.stdout


def test_bench_passes_its_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from tally_core.eval import bench

    seen: dict[str, Any] = {}

    def fake_main(argv: Any, *, extra: Any = None, prog: str = "") -> int:
        seen.update(argv=list(argv), extra=extra, prog=prog)
        return 3

    monkeypatch.setattr(bench, "main", fake_main)
    res = _run("bench", "overhead", "--quick", "--json", "x.json")
    assert res.exit_code == 3
    assert seen == {"argv": ["overhead", "--quick", "--json", "x.json"], "extra": None,
                    "prog": "tally bench"}  # fmt: skip
    res = _run("bench", "routing", "--help")
    assert seen["argv"] == ["routing", "--help"] and seen["extra"] is None


def test_cli_import_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tally_core.cli\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('litellm', 'langchain_core', "
        "'tally_litellm', 'numpy', 'rich')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
