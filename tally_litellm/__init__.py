"""Tally for LiteLLM: a routing strategy for ``litellm.Router`` and telemetry callbacks."""

from __future__ import annotations

__all__: list[str] = []
