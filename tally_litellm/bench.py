"""``python -m tally_core.eval.bench`` with LiteLLM's Adaptive Router among the routers.

Run offline: ``LITELLM_LOCAL_MODEL_COST_MAP=True python -m tally_litellm.bench routing``
(the variable keeps LiteLLM from fetching its price map when it is imported).
"""

from __future__ import annotations

from collections.abc import Sequence

from tally_core.eval.bench import main as _core_main
from tally_litellm.baseline import ROUTERS


def main(argv: Sequence[str] | None = None) -> int:
    return _core_main(argv, extra=ROUTERS, prog="python -m tally_litellm.bench")


if __name__ == "__main__":
    raise SystemExit(main())
