"""Tally for LangChain: a routing chat model and a telemetry callback handler.

- ``ChatTally``: a chat model that routes each call to the cheapest child
  model that is good enough, and reports the outcome to Tally.
- ``TallyCallbackHandler``: telemetry for any LangChain chat model.
- ``auto_telemetry(tally)``: that handler on every run, no callbacks passed.
- ``collect_decisions()``: the routing decisions made inside a block, for
  late feedback when the chain's output is not the message.
"""

from __future__ import annotations

from tally_langchain.callbacks import AutoTelemetry, TallyCallbackHandler, auto_telemetry
from tally_langchain.chat_models import ChatTally, collect_decisions

__all__ = [
    "AutoTelemetry",
    "ChatTally",
    "TallyCallbackHandler",
    "auto_telemetry",
    "collect_decisions",
]
