"""Rebuild tally_core/data/litellm_snapshot.json from the installed LiteLLM price map.

Run: python tools/make_price_snapshot.py
The snapshot is what Tally reads when LiteLLM is not installed.
"""

from __future__ import annotations

import json
from datetime import date
from importlib import metadata
from pathlib import Path

from tally_core.catalog import _facts, _litellm_map_path

COLUMNS = [
    "input_cost_per_mtok",
    "output_cost_per_mtok",
    "context_window",
    "supports_tools",
    "provider",
]


def main() -> None:
    src = _litellm_map_path()
    if src is None:
        raise SystemExit("litellm is not installed: pip install litellm")
    raw = json.loads(src.read_text(encoding="utf-8"))
    models = {}
    for name, entry in sorted(raw.items()):
        if isinstance(entry, dict) and entry.get("mode", "chat") in ("chat", "responses"):
            f = _facts(entry)
            if f is not None:
                models[name] = [f[c] for c in COLUMNS]
    out = Path(__file__).resolve().parent.parent / "tally_core" / "data" / "litellm_snapshot.json"
    snap = {
        "taken_from": f"litellm {metadata.version('litellm')} on {date.today().isoformat()}",
        "columns": COLUMNS,
        "models": models,
    }
    out.write_text(json.dumps(snap, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{len(models)} models -> {out}")


if __name__ == "__main__":
    main()
