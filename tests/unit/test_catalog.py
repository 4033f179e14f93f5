from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tally_core import InvalidFieldError, ModelSpec, UnknownModelError
from tally_core import catalog as catalog_mod
from tally_core.catalog import Catalog, load_price_map


def test_prices_come_from_the_litellm_map() -> None:
    cat = Catalog(["gpt-4o-mini", "claude-haiku-4-5"])
    mini = cat["gpt-4o-mini"]
    assert mini.input_cost_per_mtok == pytest.approx(0.15)
    assert mini.output_cost_per_mtok == pytest.approx(0.60)
    assert mini.context_window == 128_000
    assert mini.supports_tools is True
    assert mini.provider == "openai"
    assert cat["claude-haiku-4-5"].provider == "anthropic"
    assert cat.source.startswith("litellm-map:")


def test_provider_prefix_is_resolved() -> None:
    assert Catalog(["openai/gpt-4o-mini"])["openai/gpt-4o-mini"].input_cost_per_mtok == (
        pytest.approx(0.15)
    )


def test_snapshot_is_used_without_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_mod, "_litellm_map_path", lambda: None)
    monkeypatch.setattr(catalog_mod, "_cache", {})
    facts, source = load_price_map()
    assert source.startswith("tally-snapshot:")
    assert facts["gpt-4o"]["input_cost_per_mtok"] == pytest.approx(2.5)
    assert Catalog(["gpt-4o"])["gpt-4o"].output_cost_per_mtok == pytest.approx(10.0)


def test_custom_model_and_override() -> None:
    cat = Catalog(
        [
            ModelSpec(
                name="my-llama",
                input_cost_per_mtok=0.2,
                output_cost_per_mtok=0.6,
                context_window=8192,
                supports_tools=False,
            ),
            ModelSpec(name="gpt-4o", input_cost_per_mtok=2.0),
        ]
    )
    assert cat["my-llama"].context_window == 8192
    assert cat["gpt-4o"].input_cost_per_mtok == 2.0  # user wins
    assert cat["gpt-4o"].output_cost_per_mtok == pytest.approx(10.0)  # map fills the rest
    assert cat["gpt-4o"].source == "user+map"


def test_unknown_model_without_prices_fails_at_construction() -> None:
    with pytest.raises(UnknownModelError) as info:
        Catalog(["my-private-model"])
    assert "my-private-model" in str(info.value)
    assert "input_cost_per_mtok" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_cost_per_mtok": -1.0}, "input_cost_per_mtok"),
        ({"context_window": 0}, "context_window"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_model_spec(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidFieldError) as info:
        ModelSpec(name="m", **kwargs)
    assert info.value.field == field


def test_empty_and_duplicate_pool() -> None:
    with pytest.raises(InvalidFieldError):
        Catalog([])
    with pytest.raises(InvalidFieldError):
        Catalog(["gpt-4o", "gpt-4o"])


def test_import_is_light() -> None:
    # tally_core must never import litellm or langchain (import must stay fast).
    code = (
        "import sys, tally_core\n"
        "from tally_core import Tally\n"
        "t = Tally(['gpt-4o-mini', 'gpt-4o'], store=':memory:')\n"
        "t.route(task_type='qa')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('litellm', 'langchain_core', "
        "'langchain', 'tally_litellm', 'tally_langchain')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_price_source_per_model() -> None:
    cat = Catalog(
        [
            "gpt-4o-mini",
            ModelSpec(name="gpt-4o", input_cost_per_mtok=2.0),
            ModelSpec(name="mine", input_cost_per_mtok=0.1, output_cost_per_mtok=0.2),
        ]
    )
    assert cat.price_source("gpt-4o-mini") == cat.source
    assert cat.price_source("gpt-4o") == f"user+{cat.source}"
    assert cat.price_source("mine") == "user"
    rows = {name: (i, o, src) for name, i, o, src in cat.price_rows()}
    assert rows["gpt-4o"][:2] == (2.0, pytest.approx(10.0))
    assert rows["mine"] == (0.1, 0.2, "user")


def test_store_price_map_is_read_first(tmp_path: Path) -> None:
    import json

    assert catalog_mod.store_price_map(tmp_path) is None
    assert catalog_mod.store_price_map(":memory:") is None
    entry = {"input_cost_per_token": 1e-6, "output_cost_per_token": 3e-6, "mode": "chat"}
    raw = {f"m{i}": entry for i in range(10)} | {"gpt-4o": {**entry, "litellm_provider": "x"}}
    catalog_mod.save_price_map(tmp_path, json.dumps(raw))
    path = catalog_mod.store_price_map(tmp_path)
    assert path == tmp_path / catalog_mod.STORE_PRICE_MAP
    cat = Catalog(["gpt-4o"], price_map=path)
    assert cat["gpt-4o"].input_cost_per_mtok == pytest.approx(1.0)
    assert cat.price_source("gpt-4o").startswith("refreshed-map:")
    with pytest.raises(InvalidFieldError):
        catalog_mod.save_price_map(tmp_path, "{}")


def test_fetch_failure_is_one_line() -> None:
    from tally_core import TallyError

    with pytest.raises(TallyError) as info:
        catalog_mod.fetch_price_map("http://127.0.0.1:9/x.json", timeout=2.0)
    assert str(info.value).startswith("cannot download the price map") and "\n" not in str(
        info.value
    )
