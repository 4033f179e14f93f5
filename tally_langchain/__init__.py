"""Tally for LangChain: a routing chat model, agent middleware, and telemetry.

- ``ChatTally``: a chat model that routes each call to the cheapest child
  model that is good enough, and reports the outcome to Tally.
- ``TallyMiddleware``: routes every model call of a LangChain v1 agent
  (``create_agent(..., middleware=[TallyMiddleware(...)])``); needs the
  ``langchain`` package, imported only when first used.
- ``TallyDecisionModel``: Tally as the decision model of LangChain's
  ``ModelRouterMiddleware`` (where the installed ``langchain-core`` has
  ``langchain_core.decisions``).
- ``TallyCallbackHandler``: telemetry for any LangChain chat model.
- ``auto_telemetry(tally)``: that handler on every run, no callbacks passed.
- ``collect_decisions()``: the routing decisions made inside a block, for
  late feedback when the chain's output is not the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tally_langchain.callbacks import AutoTelemetry, TallyCallbackHandler, auto_telemetry
from tally_langchain.chat_models import ChatTally, collect_decisions

if TYPE_CHECKING:
    from tally_langchain.decision import TallyDecisionModel
    from tally_langchain.middleware import TallyMiddleware

__all__ = [
    "AutoTelemetry",
    "ChatTally",
    "TallyCallbackHandler",
    "TallyDecisionModel",
    "TallyMiddleware",
    "auto_telemetry",
    "collect_decisions",
]

# Imported on first use: they need the `langchain` package (agents), which
# `tally_langchain` itself does not.
_LAZY = {
    "TallyMiddleware": "tally_langchain.middleware",
    "TallyDecisionModel": "tally_langchain.decision",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tally_langchain' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
