"""Tally for LangChain: a routing chat model and a telemetry callback handler."""

from __future__ import annotations

__all__: list[str] = []
