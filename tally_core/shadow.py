"""Shadow tests: a candidate model answers a sample of live calls in the background.

``tally.shadow("gpt-4.1-mini", sample=0.1)`` asks the adapters to send a copy
of about one call in ten to the candidate after the user's call has been
answered; the user's response is never delayed, altered or failed by it.
Both answers are graded with the adapter's scorer, and the shadow call is
recorded as a decision of its own pinned to the candidate (tagged ``shadow``
and ``shadow-of:<primary decision id>``), so its outcome is evidence for the
candidate: a shadowed model can be certified without serving a single user.
The call's compliance rules hold for shadows too (a candidate the call may
not use gets no copy); the floor does not gate copies, which serve no user.

``tally.shadow_report()`` pairs each shadow with its primary call in the
ledger and reports, per task type and candidate, the quality difference with
a 95% confidence interval (paired t), and the cost and latency deltas.

This module is host-free: what to shadow (``Shadows``), how a copy is
planned, run and recorded (``ShadowCopies``: both adapters use it) and the
report. The adapters only make the call itself (``tally_litellm`` through
``litellm.completion``, ``tally_langchain`` on the candidate's chat model).

>>> shadows = Shadows(seed=1)
>>> spec = shadows.start("gpt-4o-mini", sample=0.5, task_types=["qa-simple"])
>>> sum(shadows.pick("qa-simple", served="gpt-4o") is not None for _ in range(1000))
473
>>> shadows.pick("summarisation", served="gpt-4o") is None   # not a shadowed task type
True
>>> shadows.pick("qa-simple", served="gpt-4o-mini") is None  # it answered itself
True
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tally_core.adapters import OnceLog, error_class
from tally_core.envelope import parse_task_type
from tally_core.errors import InvalidFieldError

if TYPE_CHECKING:
    from tally_core.decision import RouteDecision
    from tally_core.router import Tally

__all__ = [
    "MAX_PENDING",
    "SHADOW_TAG",
    "ShadowCopies",
    "ShadowPair",
    "ShadowSpec",
    "Shadows",
    "shadow_of_tag",
    "shadow_report",
]

#: Shadow copies one adapter has in flight at most; more are dropped and counted.
MAX_PENDING = 64

SHADOW_TAG = "shadow"
_OF = "shadow-of:"


def shadow_of_tag(decision_id: str) -> str:
    """The tag that ties a shadow call to its primary call's decision."""
    return _OF + decision_id


@dataclass(frozen=True)
class ShadowSpec:
    """One shadow test: who gets copies of what, until when."""

    candidate: str
    sample: float
    task_types: frozenset[str] | None
    until: float | None  # unix time; None: until stopped

    def applies(self, task_type: str, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return False
        return self.task_types is None or task_type in self.task_types


class Shadows:
    """The shadow tests a ``Tally`` runs (its ``shadows`` attribute); thread-safe."""

    def __init__(self, seed: int | None = None) -> None:
        self._specs: dict[str, ShadowSpec] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def start(
        self,
        candidate: str,
        *,
        sample: float = 0.1,
        task_types: Iterable[str] | None = None,
        until: datetime | float | None = None,
    ) -> ShadowSpec:
        """Shadow ``candidate`` on a ``sample`` share of the calls (of ``task_types``)."""
        if not isinstance(candidate, str) or not candidate:
            raise InvalidFieldError("candidate", "must be a model name")
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not (
            0.0 < sample <= 1.0
        ):
            raise InvalidFieldError("sample", f"must be a share in (0, 1], got {sample!r}")
        kinds: frozenset[str] | None = None
        if task_types is not None:
            if isinstance(task_types, str):
                task_types = [task_types]
            kinds = frozenset(parse_task_type(t) for t in task_types)
            if not kinds:
                raise InvalidFieldError("task_types", "must name at least one task type")
        end: float | None
        if until is None:
            end = None
        elif isinstance(until, datetime):
            end = until.timestamp()
        elif isinstance(until, (int, float)) and not isinstance(until, bool) and math.isfinite(
            until
        ):
            end = float(until)
        else:
            raise InvalidFieldError("until", "must be a datetime or a unix time")
        spec = ShadowSpec(candidate, float(sample), kinds, end)
        with self._lock:
            self._specs[candidate] = spec
        return spec

    def stop(self, candidate: str) -> bool:
        """Stop shadowing ``candidate``; False if it was not shadowed."""
        with self._lock:
            return self._specs.pop(candidate, None) is not None

    @property
    def active(self) -> list[ShadowSpec]:
        now = time.time()
        with self._lock:
            return [s for s in self._specs.values() if s.until is None or now < s.until]

    def pick(self, task_type: str, served: str | None) -> str | None:
        """The candidate that gets a copy of this call, if one is drawn (at most one)."""
        if not self._specs:
            return None
        now = time.time()
        with self._lock:
            for spec in list(self._specs.values()):
                if spec.until is not None and now >= spec.until:
                    del self._specs[spec.candidate]
                    continue
                if spec.candidate != served and spec.applies(task_type, now) and (
                    self._rng.random() < spec.sample
                ):
                    return spec.candidate
        return None


class ShadowCopies:
    """The host-free half of making shadow copies, for one adapter.

    ``plan()`` draws whether a served call gets a copy and routes the copy as a
    decision of its own pinned to the candidate, under the call's compliance
    rules (a candidate the call may not use gets no copy) but not its floor (a
    copy serves no user). ``start()`` / ``start_async()`` run the adapter's copy
    job in the background: sync jobs on a small thread pool of its own, async
    ones as tasks on the running loop, in an empty context (so the copy's run
    never nests in the caller's trace); both bounded by ``max_pending``, what
    does not fit dropped and counted. A job reports through ``record()`` or
    ``failed()``; nothing a copy does raises into the caller. ``wait()`` is
    what ``tally.flush()`` waits on (``Tally.add_flush_waiter``).

    >>> from tally_core import ModelSpec, Tally
    >>> t = Tally([ModelSpec(name="a", input_cost_per_mtok=1, output_cost_per_mtok=1),
    ...            ModelSpec(name="b", input_cost_per_mtok=2, output_cost_per_mtok=2)],
    ...           fallback="b", store=":memory:", seed=0, background=False)
    >>> _ = t.shadow("a", sample=1.0)
    >>> copies = ShadowCopies(t)
    >>> d = t.route(task_type="qa-simple", allowed_models=["b"])
    >>> copies.plan(d, served="b") is None    # the call may not use "a": no copy
    True
    >>> copy = copies.plan(t.route(task_type="qa-simple"), served="b")
    >>> copy.model, "shadow" in copy.envelope.tags
    ('a', True)
    >>> copies.start(lambda: copies.record(copy, time.perf_counter(), success=True))
    True
    >>> copies.wait(5), copies.made
    (True, 1)
    >>> copies.close(); t.close()
    """

    def __init__(self, tally: Tally, log: OnceLog | None = None, *,
                 max_pending: int = MAX_PENDING) -> None:
        self.tally = tally
        self.log = log if log is not None else OnceLog()
        self.max_pending = max_pending
        self.made = 0
        self.dropped = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # held, or the loop may drop them

    # -- planning ------------------------------------------------------------

    def plan(
        self,
        decision: RouteDecision | None,
        served: str | None,
        *,
        rules: Mapping[str, Any] | None = None,
        available: Callable[[str], bool] | None = None,
    ) -> RouteDecision | None:
        """The copy's decision (pinned to the candidate) if this call gets one, else None.

        ``rules``: the call's ``allowed_models`` / ``allowed_providers`` (default:
        its envelope's); ``available(candidate)``: whether the adapter can call it.
        Never raises."""
        from tally_core.router import NoCandidateError  # router imports this module

        try:
            if decision is None:
                return None
            candidate = self.tally.shadows.pick(decision.task_type, served)
            if candidate is None:
                return None
            if available is not None and not available(candidate):
                self.log.error("shadow-unavailable", "tally: the shadow candidate %s has no "
                               "model this adapter can call", candidate)
                return None
            if rules is None and decision.envelope is not None:
                env_rules = decision.envelope
                rules = {"allowed_models": env_rules.allowed_models,
                         "allowed_providers": env_rules.allowed_providers}
            rules = rules or {}
            allowed = rules.get("allowed_models")
            if allowed is not None and candidate not in allowed:
                return None  # the caller did not allow this model for this call
            env: dict[str, Any] = {
                "task_type": decision.task_type, "org": decision.org,
                "allowed_models": (candidate,),
                "tags": (SHADOW_TAG, shadow_of_tag(decision.decision_id)),
            }
            if rules.get("allowed_providers") is not None:
                env["allowed_providers"] = rules["allowed_providers"]
            if decision.floor is not None:
                env["quality_floor"] = decision.floor
            try:
                copy = self.tally.route(env)
            except NoCandidateError:
                return None  # an org's rule refuses the candidate
            # A route that did not land on the candidate means a rule refused it; the
            # floor does not gate copies (evaluating the model is the point).
            return copy if copy.model == candidate else None
        except Exception:
            self.log.error("shadow", "tally: could not plan a shadow call", exc_info=True)
            return None

    # -- running -------------------------------------------------------------

    def _reserve(self) -> bool:
        with self._lock:
            if self._pending >= self.max_pending:
                self.dropped += 1
                return False
            self._pending += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def start(self, job: Callable[[], None]) -> bool:
        """Run ``job`` on the shadow thread pool; False if dropped (full). Never raises."""
        try:
            if not self._reserve():
                return False
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=2,
                                                    thread_name_prefix="tally-shadow")
                pool = self._pool
            pool.submit(self._guard, job)
            return True
        except Exception:
            self._release()
            self.log.error("shadow", "tally: could not start a shadow call", exc_info=True)
            return False

    def start_async(self, job: Callable[[], Awaitable[None]]) -> bool:
        """Run ``job()`` as a task on the running loop (or, with none, on the pool)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            from tally_core.adapters import run_sync

            return self.start(lambda: run_sync(job()))
        try:
            if not self._reserve():
                return False
            # An empty context: the copy is no part of the caller's run or trace.
            task = contextvars.Context().run(loop.create_task, self._aguard(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        except Exception:
            self._release()
            self.log.error("shadow", "tally: could not start a shadow call", exc_info=True)
            return False

    def _guard(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:
            self.log.error("shadow", "tally: a shadow call failed", exc_info=True)
        finally:
            self._release()

    async def _aguard(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception:
            self.log.error("shadow", "tally: a shadow call failed", exc_info=True)
        finally:
            self._release()

    # -- reporting -----------------------------------------------------------

    def record(self, decision: RouteDecision, started: float, **fields: Any) -> None:
        """A copy answered: its telemetry (``fields`` as ``tally.telemetry`` takes them),
        latency since ``started`` (``time.perf_counter()``)."""
        fields.setdefault("latency_ms", (time.perf_counter() - started) * 1000.0)
        self.tally.telemetry(decision, **fields)
        with self._lock:
            self.made += 1

    def failed(self, decision: RouteDecision, exc: BaseException, started: float) -> None:
        """A copy raised: an availability failure of the candidate, by error class."""
        self.tally.telemetry(decision, success=False, error=error_class(exc),
                             latency_ms=(time.perf_counter() - started) * 1000.0)

    def wait(self, timeout: float | None) -> bool:
        """Until every copy started so far has been recorded (``tally.flush``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._pending == 0:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class ShadowPair:
    """A shadow test's figures for one task type and candidate."""

    task_type: str
    candidate: str
    pairs: int
    primary_quality: float | None
    shadow_quality: float | None
    quality_diff: float | None  # shadow - primary, paired
    ci_low: float | None
    ci_high: float | None
    primary_cost_usd: float | None  # mean per call
    shadow_cost_usd: float | None
    primary_latency_ms: float | None  # median
    shadow_latency_ms: float | None


def _quality(row: Mapping[str, Any]) -> float | None:
    q = row.get("quality")
    if isinstance(q, (int, float)):
        return float(q)
    s = row.get("success")
    return None if s is None else float(bool(s))


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def shadow_report(rows: Iterable[Mapping[str, Any]], confidence: float = 0.95) -> list[ShadowPair]:
    """Pair every shadow call with its primary call; figures per (task type, candidate).

    ``rows`` are ledger rows (``Ledger.rows()``), in any order.
    """
    from tally_core.reports import t_quantile  # not at import time: reports is large

    primaries: dict[str, Mapping[str, Any]] = {}
    shadows: list[tuple[str, Mapping[str, Any]]] = []
    for row in rows:
        tags = row.get("tags") or ()
        of = next((t[len(_OF):] for t in tags if isinstance(t, str) and t.startswith(_OF)), None)
        if of is not None and SHADOW_TAG in tags:
            shadows.append((of, row))
        elif row.get("decision_id"):
            primaries[str(row["decision_id"])] = row
    groups: dict[tuple[str, str], list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = {}
    for of, row in shadows:
        primary = primaries.get(of)
        if primary is not None:
            key = (str(row.get("task_type")), str(row.get("model")))
            groups.setdefault(key, []).append((primary, row))
    out = []
    for (task, candidate), pairs in sorted(groups.items()):
        qp = [(_quality(p), _quality(s)) for p, s in pairs]
        both = [(a, b) for a, b in qp if a is not None and b is not None]
        diffs = [b - a for a, b in both]
        n = len(diffs)
        mean = _mean(diffs)
        lo = hi = None
        if n >= 2 and mean is not None:
            var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
            half = t_quantile(0.5 + confidence / 2, n - 1) * math.sqrt(var / n)
            lo, hi = mean - half, mean + half
        out.append(ShadowPair(
            task_type=task, candidate=candidate, pairs=len(pairs),
            primary_quality=_mean([a for a, _ in both]), shadow_quality=_mean([b for _, b in both]),
            quality_diff=mean, ci_low=lo, ci_high=hi,
            primary_cost_usd=_mean([float(p["cost_usd"]) for p, _ in pairs
                                    if isinstance(p.get("cost_usd"), (int, float))]),
            shadow_cost_usd=_mean([float(s["cost_usd"]) for _, s in pairs
                                   if isinstance(s.get("cost_usd"), (int, float))]),
            primary_latency_ms=_median([float(p["latency_ms"]) for p, _ in pairs
                                        if isinstance(p.get("latency_ms"), (int, float))]),
            shadow_latency_ms=_median([float(s["latency_ms"]) for _, s in pairs
                                       if isinstance(s.get("latency_ms"), (int, float))]),
        ))
    return out
