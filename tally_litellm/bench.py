"""``python -m tally_core.bench`` with LiteLLM's Adaptive Router among the routers.

Run: ``python -m tally_litellm.bench routing --scenario seed-landscape``
"""

from __future__ import annotations

import os

# A benchmark never fetches LiteLLM's price map from the network: set before
# litellm is first imported (tally_litellm imports it).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Sequence  # noqa: E402

from tally_core.bench import main as _core_main  # noqa: E402
from tally_litellm.baseline import ROUTERS  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    return _core_main(argv, extra=ROUTERS, prog="python -m tally_litellm.bench")


if __name__ == "__main__":
    raise SystemExit(main())
