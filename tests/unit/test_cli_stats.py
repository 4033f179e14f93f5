"""``tally stats`` on a store directory: the learned state through the store, nothing written."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tally_core import DiskStore, Tally
from tally_core.cli import app
from tally_core.home import StoreDir

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
QUALITY = {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95, "gpt-4o": 0.97}


def _table(out: str) -> dict[str, tuple[int, str]]:
    """model -> (calls, phase) from the printed table."""
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()
            if line.count("│") >= 8]  # fmt: skip
    return {r[0]: (int(r[1]), r[4]) for r in rows if r[0] in POOL}


def test_stats_reads_a_directory_store_and_writes_nothing(tmp_path: Path) -> None:
    with Tally(POOL, fallback="gpt-4o", store=tmp_path, seed=7, background=False) as t:
        for _ in range(150):
            d = t.route(task_type="qa", quality_floor=0.8)
            t.telemetry(d, quality=QUALITY[d.model], input_tokens=300, output_tokens=50)
        want = {r["model"]: (r["calls"], r["phase"])
                for r in t.stats("qa-simple", quality_floor=0.8)}  # fmt: skip
    with DiskStore(tmp_path) as s:
        version = s.version()
    ledger_bytes = StoreDir(tmp_path).ledger.read_bytes()

    res = CliRunner().invoke(app, ["stats", "qa-simple", "--store", str(tmp_path),
                                   "--floor", "0.8", "--models", ",".join(POOL)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _table(res.stdout) == want and sum(n for n, _ in want.values()) == 150
    # Without --models the pool is what the state has seen; TALLY_HOME names the store.
    again = CliRunner().invoke(app, ["stats", "qa-simple", "--floor", "0.8"],
                               env={"TALLY_HOME": str(tmp_path)})  # fmt: skip
    seen = {m: n for m, (n, _) in want.items() if n}
    assert {m: n for m, (n, _) in _table(again.stdout).items()} == seen
    with DiskStore(tmp_path) as s:
        assert s.version() == version
    assert StoreDir(tmp_path).ledger.read_bytes() == ledger_bytes

    none = CliRunner().invoke(app, ["stats", "code-debug", "--store", str(tmp_path)])
    assert none.exit_code == 1 and "no learned state for 'code-debug'" in none.stderr
