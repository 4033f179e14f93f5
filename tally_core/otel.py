"""OpenTelemetry export: one GenAI span per call Tally records.

``Tally(..., otel=True)`` (the global tracer provider) or
``Tally(..., otel=OTelExporter(tracer_provider=...))`` emits, for each call
the recorder applies, a span named ``chat {model}`` with the GenAI semantic
conventions and Tally's own attributes:

=============================== ================================================
``gen_ai.operation.name``       ``chat``
``gen_ai.request.model``        what the caller asked for: ``request_model`` if
                                given (a LiteLLM group name, say), else the
                                model the call would have used without Tally
                                (the fallback)
``gen_ai.response.model``       the model Tally chose (and the ledger recorded)
``gen_ai.provider.name``        the catalog's provider of that model
``gen_ai.usage.input_tokens``   as reported
``gen_ai.usage.output_tokens``  as reported
``error.type``                  the error class, when the call failed
``tally.*``                     ``decision_id``, ``phase``, ``confidence``,
                                ``task_type``, ``org``, ``quality_floor``,
                                ``quality``, ``success``, ``cost_usd``,
                                ``latency_ms``, ``holdout``, ``slugs``
=============================== ================================================

The span ends at the time the outcome was reported and starts ``latency_ms``
before. When ``telemetry()`` is called inside a span (the adapter runs in the
caller's trace), Tally's span is its child. Never any prompt or completion
text: the ledger row the span is built from has none. Off by default, and
when off nothing here is imported. Export errors are logged, never raised.

Needs the ``otel`` extra: ``pip install 'tally-router[otel]'``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tally_core.errors import InvalidFieldError

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, TracerProvider

    from tally_core.catalog import Catalog

__all__ = ["OTelExporter", "exporter_for"]

log = logging.getLogger("tally.otel")

_TALLY_ATTRS = (
    "decision_id",
    "phase",
    "confidence",
    "task_type",
    "org",
    "quality_floor",
    "quality",
    "cost_usd",
    "latency_ms",
)
_MAX_PARENTS = 100_000


class OTelExporter:
    """Turns recorded calls into OpenTelemetry spans.

    Parameters
    ----------
    tracer_provider
        Where the spans go; default: the global provider
        (``opentelemetry.trace.set_tracer_provider``).
    request_model
        The value of ``gen_ai.request.model`` (what callers ask for, e.g. the
        LiteLLM model group); default: the ``Tally``'s fallback.
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, request_model: str | None = None
    ) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ImportError(
                "Tally's OpenTelemetry export needs the 'otel' extra: "
                "pip install 'tally-router[otel]'"
            ) from exc
        from tally_core import __version__

        self._trace = trace
        self._tracer = trace.get_tracer("tally", __version__, tracer_provider=tracer_provider)
        self.request_model = request_model
        self._catalog: Catalog | None = None
        self._fallback: str | None = None
        self._parents: OrderedDict[str, SpanContext] = OrderedDict()
        self._lock = threading.Lock()
        self._failed = False
        self.exported = 0

    def bind(self, catalog: Catalog, fallback: str) -> None:
        """Called by ``Tally``: where providers and the default request model come from."""
        self._catalog = catalog
        self._fallback = fallback

    def capture(self, event_id: str) -> None:
        """On the caller's thread, at ``telemetry()``: remember the current
        span, so the call's span is its child. Cheap; never raises."""
        try:
            ctx = self._trace.get_current_span().get_span_context()
            if ctx.is_valid:
                with self._lock:
                    self._parents[event_id] = ctx
                    if len(self._parents) > _MAX_PARENTS:
                        self._parents.popitem(last=False)
        except Exception:  # telemetry never raises into the caller
            log.debug("tally otel: could not read the current span", exc_info=True)

    def export(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """One span per ledger row (worker thread). Logs, never raises."""
        for row in rows:
            try:
                self._emit(row)
                self.exported += 1
            except Exception:
                if not self._failed:  # once: a broken exporter must not flood the log
                    self._failed = True
                    log.warning("tally otel: could not export a span", exc_info=True)

    def _emit(self, row: Mapping[str, Any]) -> None:
        from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

        model = str(row["model"])
        with self._lock:
            parent = self._parents.pop(str(row.get("event_id")), None)
        context = self._trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        end_ns = int(float(row["ts"]) * 1e9)
        latency = row.get("latency_ms")
        start_ns = end_ns - int(float(latency) * 1e6) if latency is not None else end_ns
        span = self._tracer.start_span(
            f"chat {model}",
            context=context,
            kind=SpanKind.CLIENT,
            attributes=self.attributes(row),
            start_time=start_ns,
        )
        if row.get("error"):
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)

    def attributes(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The span's attributes for one ledger row (None values left out).

        >>> exp = OTelExporter(request_model="auto")
        >>> attrs = exp.attributes({"model": "gpt-4o-mini", "input_tokens": 12,
        ...     "output_tokens": 3, "phase": "exploit", "task_type": "qa-simple"})
        >>> attrs["gen_ai.request.model"], attrs["gen_ai.response.model"], attrs["tally.phase"]
        ('auto', 'gpt-4o-mini', 'exploit')
        """
        model = str(row["model"])
        provider = None
        if self._catalog is not None:
            if model in self._catalog:
                provider = self._catalog[model].provider
            else:
                found = self._catalog.lookup(model)
                provider = found.get("provider") if found else None
        if provider is None and "/" in model:
            provider = model.split("/", 1)[0]
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self.request_model or self._fallback or model,
            "gen_ai.response.model": model,
            "gen_ai.provider.name": provider,
            "gen_ai.usage.input_tokens": row.get("input_tokens"),
            "gen_ai.usage.output_tokens": row.get("output_tokens"),
            "error.type": row.get("error"),
        }
        for name in _TALLY_ATTRS:
            attrs[f"tally.{name}"] = row.get(name)
        if row.get("success") is not None:
            attrs["tally.success"] = bool(row["success"])
        attrs["tally.holdout"] = bool(row.get("holdout"))
        if row.get("slugs"):
            attrs["tally.slugs"] = [str(s) for s in row["slugs"]]
        return {k: v for k, v in attrs.items() if v is not None}


def exporter_for(otel: Any, catalog: Catalog, fallback: str) -> OTelExporter | None:
    """``Tally(otel=...)``: ``False``/``None`` (off), ``True`` (the global
    tracer provider) or an ``OTelExporter``."""
    if otel is None or otel is False:
        return None
    if otel is True:
        exp = OTelExporter()
    elif isinstance(otel, OTelExporter):
        exp = otel
    else:
        raise InvalidFieldError(
            "otel", f"must be True, False or an OTelExporter, got {type(otel).__name__}"
        )
    exp.bind(catalog, fallback)
    return exp
