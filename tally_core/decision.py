"""RouteDecision: what Tally chose for one call, and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Dropped", "Phase", "RouteDecision"]

Phase = Literal["calibrate", "explore", "exploit", "fallback"]


@dataclass(frozen=True, slots=True)
class Dropped:
    """A candidate that was not eligible for this call, and why."""

    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The model to call, with the evidence behind the choice.

    Attributes
    ----------
    model
        The model to call.
    decision_id
        Pass it (or the decision itself) back to ``telemetry`` / ``feedback``.
    phase
        ``calibrate`` (first outcomes every candidate needs, e.g. before
        parity picks its reference), ``explore`` (learning a cheaper model,
        within the risk budget), ``exploit`` (a cheaper model whose saving
        outweighs its risk of missing the floor) or ``fallback`` (the safe
        arm: the fallback, or the model that replaced a fallback shown
        below the floor; ``notes`` say which).
    confidence
        Posterior probability that ``model``'s quality for this task type and
        context is at or above the floor (with no floor: within the parity
        tolerance of the best model observed). 0-1.
    estimated_cost_usd
        Price of this call at the catalog's prices, with the envelope's token
        counts (or those observed for the task type).
    stream
        Whether streaming is recommended (prose or mixed output that a human
        waits for).
    floor
        The quality bar applied: the envelope's floor, or the parity target.
    dropped
        Candidates not eligible for this call and why.
    inferred
        Envelope fields an adapter inferred from the messages
        (``tally_core.infer``) rather than the caller giving them.
    notes
        What the policy adds: the fallback replaced because the evidence
        shows it below the floor, a spent risk budget, parity calibration.
    """

    model: str
    decision_id: str
    phase: Phase
    confidence: float
    estimated_cost_usd: float
    task_type: str
    org: str
    cell: str
    floor: float | None
    stream: bool = False
    holdout: bool = False
    dropped: tuple[Dropped, ...] = ()
    considered: tuple[tuple[str, float, float, float], ...] = ()  # name, mean, n, cost
    notes: tuple[str, ...] = ()  # what the policy says of this route (a replaced fallback, ...)
    envelope: Any = None  # the Envelope routed (not serialised: routing stays cheap)
    created_at: float = 0.0
    inferred: tuple[str, ...] = ()

    def explain(self) -> str:
        """A readable account of the choice: the pick, the floor, every drop.

        >>> d = RouteDecision(model="gpt-4o-mini", decision_id="d1", phase="exploit",
        ...     confidence=0.97, estimated_cost_usd=0.00045, task_type="qa-simple",
        ...     org="default", cell="*", floor=0.8,
        ...     dropped=(Dropped("claude-haiku-4-5", "context window 8192 < 50000 tokens"),))
        >>> print(d.explain())
        qa-simple -> gpt-4o-mini (exploit, confidence 0.97, est. $0.000450)
          floor: 0.80
          dropped claude-haiku-4-5: context window 8192 < 50000 tokens
        """
        floor = "parity with the best observed" if self.floor is None else f"{self.floor:.2f}"
        lines = [
            f"{self.task_type} -> {self.model} ({self.phase}, confidence {self.confidence:.2f}, "
            f"est. ${self.estimated_cost_usd:.6f})",
            f"  floor: {floor}",
        ]
        if self.inferred:
            env = self.envelope
            shown = [f"{f}={getattr(env, f, '?')}" if env is not None else f
                     for f in self.inferred]
            lines.append(f"  inferred from the messages: {', '.join(shown)}")
        level = self.cell.rpartition("|")[2]
        if level in ("low", "medium", "high"):
            lines.append(
                f"  complexity: {level} (learned in its own cell; the task type's "
                "evidence where that cell has little or agrees)"
            )
        if self.holdout:
            lines.append("  holdout: sent to the fallback as part of the control group")
        for note in self.notes:
            lines.append(f"  note: {note}")
        for name, mean, n, cost in self.considered:
            lines.append(
                f"  considered {name}: quality {mean:.3f} over {n:.1f} calls, est. ${cost:.6f}"
            )
        for d in self.dropped:
            lines.append(f"  dropped {d.model}: {d.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for headers, logs and JSON)."""
        return {
            "model": self.model,
            "decision_id": self.decision_id,
            "phase": self.phase,
            "confidence": round(self.confidence, 6),
            "estimated_cost_usd": self.estimated_cost_usd,
            "task_type": self.task_type,
            "org": self.org,
            "floor": self.floor,
            "stream": self.stream,
            "holdout": self.holdout,
            "dropped": [{"model": d.model, "reason": d.reason} for d in self.dropped],
            "inferred": list(self.inferred),
        }
