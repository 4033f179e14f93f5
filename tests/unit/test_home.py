"""The on-disk layout: one owner, and the names existing stores were written with."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tally_core import Tally
from tally_core.home import StoreDir, default_home

ROOT = Path(__file__).resolve().parents[2]
# The names stores on disk already use: changing one orphans every store written before.
WRITTEN = {"ledger": "ledger.sqlite3", "state": "state", "spool": "spool",
           "price_map": "model_prices.json", "rollouts": "rollouts.json"}  # fmt: skip


def test_the_layout_keeps_the_names_existing_stores_use(tmp_path) -> None:
    d = StoreDir(tmp_path)
    assert {k: getattr(d, k) for k in WRITTEN} == {k: tmp_path / v for k, v in WRITTEN.items()}
    with Tally(["gpt-4o-mini", "gpt-4o"], store=tmp_path, background=False) as t:
        t.rollout("gpt-4o-mini", steps=(0.5, 1.0), min_calls=2)
        t.telemetry(t.route(task_type="qa"), quality=0.9)
    made = {p.name for p in tmp_path.iterdir()}
    assert {"ledger.sqlite3", "state", "spool"} <= made
    assert "rollouts.json" not in made  # rollouts live in the state store now
    assert made <= set(WRITTEN.values())


def test_the_home_is_tally_home_else_dot_tally(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TALLY_HOME", str(tmp_path / "h"))
    assert default_home() == str(tmp_path / "h") and StoreDir().root == tmp_path / "h"
    monkeypatch.setenv("TALLY_HOME", "~/tally-x")
    assert default_home() == str(Path.home() / "tally-x")
    monkeypatch.delenv("TALLY_HOME")
    assert StoreDir().ledger == Path.home() / ".tally" / "ledger.sqlite3"


@pytest.mark.parametrize("name", sorted(set(WRITTEN.values()) | {"TALLY_HOME", "~/.tally"}))
def test_only_the_home_module_spells_a_store_file_name(name: str) -> None:
    """No module outside tally_core/home.py has the name as a string literal
    (docstrings and help texts aside)."""
    found = []
    for pkg in ("tally_core", "tally_litellm", "tally_langchain", "tools"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "home.py" and path.parent.name == "tally_core":
                continue
            tree = ast.parse(path.read_text())
            docs = {id(n.body[0].value) for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                      ast.AsyncFunctionDef))
                    and n.body and isinstance(n.body[0], ast.Expr)}  # fmt: skip
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and node.value == name
                        and id(node) not in docs):  # fmt: skip
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_no_store_imports_the_router() -> None:
    """The router builds on the stores; a store reaching back into it was a cycle."""
    for path in (ROOT / "tally_core" / "stores").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "tally_core.router", path.name


def test_a_url_that_names_no_state_store_is_refused_not_made_a_directory(
    tmp_path, monkeypatch
) -> None:
    from tally_core import InvalidFieldError

    monkeypatch.chdir(tmp_path)
    for url, says in (("postgresql://tally@db/tally", "names the ledger"),
                      ("http://cache:6379", "use redis://")):  # fmt: skip
        with pytest.raises(InvalidFieldError) as err:
            Tally(["gpt-4o-mini", "gpt-4o"], store=url, ledger=":memory:")
        assert err.value.field == "store" and says in str(err.value)
    assert list(tmp_path.iterdir()) == []
