"""Model facts: prices, context windows, tool support, provider.

Read from LiteLLM's bundled price map *as a data file* (found through package
metadata, so ``litellm`` is never imported), else from a snapshot of that
map's facts shipped with Tally, then overridden by what the user gives.
``tally pricing --refresh`` downloads LiteLLM's published map into a store
directory (``model_prices.json``); Tally instances on that store read it first.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tally_core.errors import InvalidFieldError, TallyError, UnknownModelError
from tally_core.home import PRICE_MAP, StoreDir

__all__ = [
    "PRICE_MAP_URL",
    "STORE_PRICE_MAP",
    "Catalog",
    "ModelSpec",
    "fetch_price_map",
    "load_price_map",
    "parse_price_map",
    "save_price_map",
    "store_price_map",
]

_MAP_FILE = "litellm/model_prices_and_context_window_backup.json"
_SNAPSHOT = "litellm_snapshot.json"

#: LiteLLM's published price map (what ``tally pricing --refresh`` downloads).
PRICE_MAP_URL = (
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
)
#: Where a refreshed map is kept inside a store directory.
STORE_PRICE_MAP = PRICE_MAP


class ModelSpec(BaseModel):
    """What Tally knows about one model. Unset fields come from the price map.

    Parameters
    ----------
    name
        The model name as the caller will use it (LiteLLM's naming for map
        models, e.g. ``"gpt-4o-mini"`` or ``"anthropic/claude-haiku-4-5"``).
    input_cost_per_mtok, output_cost_per_mtok
        USD per million input / output tokens.
    context_window
        Maximum input tokens; ``None`` means unknown (never filtered).
    supports_tools
        Whether the model can call tools.
    provider
        Provider slug (``openai``, ``anthropic`` ...), used by
        ``allowed_providers``.

    >>> ModelSpec(name="my-llama", input_cost_per_mtok=0.2, output_cost_per_mtok=0.6,
    ...           context_window=8192, supports_tools=False).is_complete
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    input_cost_per_mtok: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    output_cost_per_mtok: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    context_window: int | None = Field(default=None, gt=0)
    supports_tools: bool | None = None
    provider: str | None = None
    source: str = "user"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = str(err["loc"][0]) if err.get("loc") else "model"
            raise InvalidFieldError(field, f"{err['msg']}, got {err.get('input')!r}") from None

    @property
    def is_complete(self) -> bool:
        """True when both prices are known."""
        return self.input_cost_per_mtok is not None and self.output_cost_per_mtok is not None

    def estimate_cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """Price of one call with these token counts.

        >>> ModelSpec(name="m", input_cost_per_mtok=1.0, output_cost_per_mtok=4.0
        ...           ).estimate_cost_usd(1_000_000, 500_000)
        3.0
        """
        return (
            input_tokens * (self.input_cost_per_mtok or 0.0)
            + output_tokens * (self.output_cost_per_mtok or 0.0)
        ) / 1e6


def _litellm_map_path() -> Path | None:
    from importlib import metadata  # ~30 ms: only when a catalog is built

    try:
        dist = metadata.distribution("litellm")
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(_MAP_FILE)))
    return path if path.is_file() else None


def _facts(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    ic, oc = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
    if not isinstance(ic, (int, float)) or not isinstance(oc, (int, float)):
        return None
    window = entry.get("max_input_tokens") or entry.get("max_tokens")
    return {
        "input_cost_per_mtok": round(float(ic) * 1e6, 6),
        "output_cost_per_mtok": round(float(oc) * 1e6, 6),
        "context_window": int(window) if isinstance(window, (int, float)) and window > 0 else None,
        "supports_tools": bool(entry.get("supports_function_calling", False)),
        "provider": entry.get("litellm_provider"),
    }


def parse_price_map(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Tally's facts (prices per M tokens, window, tools, provider) for every
    priced chat model in a LiteLLM-format price map."""
    facts = {}
    for name, entry in raw.items():
        if isinstance(entry, dict) and entry.get("mode", "chat") in ("chat", "responses"):
            f = _facts(entry)
            if f is not None:
                facts[name] = f
    return facts


_cache: dict[str, tuple[dict[str, dict[str, Any]], str]] = {}
_cache_lock = threading.Lock()


def load_price_map(
    path: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, dict[str, Any]], str]:
    """Facts per model name, and where they came from.

    Reads ``path`` if given, else LiteLLM's bundled map when LiteLLM is
    installed, else Tally's shipped snapshot. Parsed once per process.
    """
    key = str(path) if path is not None else ""
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        source: str
        src = Path(path) if path is not None else _litellm_map_path()
        if src is not None:
            facts = parse_price_map(json.loads(src.read_text(encoding="utf-8")))
            kind = "refreshed-map" if src.name == STORE_PRICE_MAP else "litellm-map"
            source = f"{kind}:{src}"
        else:
            text = resources.files("tally_core").joinpath("data", _SNAPSHOT).read_text("utf-8")
            snap = json.loads(text)
            cols = snap["columns"]
            facts = {
                name: dict(zip(cols, row, strict=True)) for name, row in snap["models"].items()
            }
            source = f"tally-snapshot:{snap['taken_from']}"
        _cache[key] = (facts, source)
        return facts, source


def store_price_map(store: object) -> Path | None:
    """The map ``tally pricing --refresh`` saved in a store, if there is one.

    ``store`` is a directory, ``":memory:"``, or a state store (its
    ``directory`` attribute is used).
    """
    where = store if isinstance(store, (str, os.PathLike)) else getattr(store, "directory", None)
    if where is None or str(where) == ":memory:":
        return None
    path = StoreDir(str(where)).price_map
    return path if path.is_file() else None


def fetch_price_map(url: str = PRICE_MAP_URL, timeout: float = 10.0) -> bytes:
    """Download a LiteLLM-format price map; a ``TallyError`` with one line
    saying why when it cannot (no network, HTTP error, timeout)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: bytes = resp.read()
    except urllib.error.HTTPError as exc:
        raise TallyError(f"cannot download the price map from {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TallyError(
            f"cannot download the price map from {url}: {reason} (no network?)"
        ) from None
    return data


def save_price_map(directory: str | os.PathLike[str], data: bytes | str) -> dict[str, Any]:
    """Check ``data`` is a LiteLLM price map and keep it as the store's map.

    Written atomically (a reader sees the old map or the new one, never half);
    returns the parsed map. Tally instances created on the store afterwards
    price their models from it.
    """
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise InvalidFieldError("price_map", f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or len(parse_price_map(raw)) < 10:
        raise InvalidFieldError(
            "price_map", "not a LiteLLM price map (fewer than 10 priced chat models)"
        )
    folder = Path(directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    target = StoreDir(folder).price_map
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model_prices.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with _cache_lock:
        _cache.pop(str(target), None)
    return raw


class Catalog:
    """The resolved pool: one complete ``ModelSpec`` per model name.

    >>> cat = Catalog(["gpt-4o-mini", ModelSpec(name="my-llama", input_cost_per_mtok=0.2,
    ...               output_cost_per_mtok=0.6, context_window=8192, supports_tools=False)])
    >>> cat["my-llama"].context_window
    8192
    >>> Catalog(["no-such-model-xyz"])
    Traceback (most recent call last):
    ...
    tally_core.errors.UnknownModelError: no-such-model-xyz: not in the price map ...
    """

    def __init__(
        self,
        models: Iterable[str | ModelSpec | Mapping[str, Any]],
        *,
        price_map: str | os.PathLike[str] | None = None,
    ) -> None:
        items = list(models)
        if not items:
            raise InvalidFieldError("models", "the pool needs at least one model")
        self._specs: dict[str, ModelSpec] = {}
        self._facts: dict[str, dict[str, Any]] | None = None
        self._price_map = price_map
        self.source = "user"
        for item in items:
            spec = self.resolve(item)
            if spec.name in self._specs:
                raise InvalidFieldError("models", f"{spec.name!r} appears twice in the pool")
            self._specs[spec.name] = spec

    def _map(self) -> dict[str, dict[str, Any]]:
        if self._facts is None:
            self._facts, self.source = load_price_map(self._price_map)
        return self._facts

    def lookup(self, name: str) -> dict[str, Any] | None:
        """Price-map facts for ``name``, trying it without a provider prefix too."""
        facts = self._map()
        if name in facts:
            return facts[name]
        if "/" in name:
            tail = name.split("/", 1)[1]
            if tail in facts:
                return facts[tail]
        return None

    def resolve(self, item: str | ModelSpec | Mapping[str, Any]) -> ModelSpec:
        """A complete ``ModelSpec``: user values win, the map fills the rest."""
        if isinstance(item, str):
            spec = ModelSpec(name=item)
        elif isinstance(item, ModelSpec):
            spec = item
        elif isinstance(item, Mapping):
            spec = ModelSpec(**dict(item))
        else:
            raise InvalidFieldError(
                "models", f"each model must be a name or a ModelSpec, got {type(item).__name__}"
            )
        given = spec.model_dump(exclude_none=True, exclude={"source"})
        if spec.is_complete and spec.supports_tools is not None:
            return spec
        found = self.lookup(spec.name)
        if found is None:
            if spec.is_complete:
                return spec.model_copy(update={"supports_tools": False})
            raise UnknownModelError(
                spec.name,
                "not in the price map and no prices given; pass "
                f"ModelSpec(name={spec.name!r}, input_cost_per_mtok=..., "
                "output_cost_per_mtok=...)",
            )
        merged = {**found, **given}
        source = "user+map" if len(given) > 1 else "map"
        return ModelSpec(**merged, source=source)

    def price_source(self, name: str) -> str:
        """Where ``name``'s facts came from: ``user``, the price map's source
        (``litellm-map:PATH``, ``refreshed-map:PATH``, ``tally-snapshot:...``),
        or ``user+`` that source when the user overrode some of them."""
        spec = self._specs[name]
        if spec.source == "user":
            return "user"
        self._map()
        return f"user+{self.source}" if spec.source == "user+map" else self.source

    def price_rows(self) -> list[tuple[str, float | None, float | None, str]]:
        """``(model, input_cost_per_mtok, output_cost_per_mtok, source)`` per
        model, as ``Ledger.sync_prices`` takes them."""
        return [
            (s.name, s.input_cost_per_mtok, s.output_cost_per_mtok, self.price_source(s.name))
            for s in self._specs.values()
        ]

    def __getitem__(self, name: str) -> ModelSpec:
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Any:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def add(self, item: str | ModelSpec | Mapping[str, Any]) -> ModelSpec:
        """Add (or replace) a model; a new model starts in calibration."""
        spec = self.resolve(item)
        self._specs[spec.name] = spec
        return spec

    def remove(self, name: str) -> None:
        if name not in self._specs:
            raise InvalidFieldError("model", f"{name!r} is not in the pool")
        if len(self._specs) == 1:
            raise InvalidFieldError("model", "the pool needs at least one model")
        del self._specs[name]
