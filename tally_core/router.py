"""Tally: wires the catalog, the policy, the state store, the telemetry queue
and the ledger into ``route`` / ``telemetry`` / ``feedback``."""

from __future__ import annotations

import atexit
import bisect
import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tally_core._brief import brief
from tally_core.breaker import Breakers
from tally_core.catalog import Catalog, ModelSpec, store_price_map
from tally_core.compliance import OrgPolicies
from tally_core.decision import Dropped, RouteDecision
from tally_core.envelope import Envelope, coerce_envelope, envelope_cache_key, parse_task_type
from tally_core.errors import (
    ClosedError,
    InvalidFieldError,
    TallyError,
    UnknownDecisionError,
)
from tally_core.events import (
    CallEvent,
    call_event,
    check_decision_id,
    check_model,
    check_number,
    check_org,
    feedback_event,
    new_id,
    rollout_event,
)
from tally_core.home import StoreDir, default_home
from tally_core.learning import (
    EMPTY_MEMORY,
    EMPTY_VIEW,
    TASK_CELL,
    ArmView,
    LearnParams,
    arm_view,
    task_memory,
)
from tally_core.ledger import Ledger, open_ledger
from tally_core.policy.bandit import FloorBandit
from tally_core.policy.base import Candidate, Plan, Policy
from tally_core.policy.floor import prob_clears
from tally_core.recorder import Recorded, Recorder, outcome
from tally_core.rollout import Rollouts, RolloutSpec
from tally_core.shadow import ShadowPair, Shadows, ShadowSpec, shadow_report
from tally_core.stores import open_store
from tally_core.stores.base import StateStore, TaskKey
from tally_core.telemetry import TelemetryQueue

if TYPE_CHECKING:
    from datetime import date, datetime
    from typing import IO

    from tally_core.reports import ExportFormat, Report, Savings, TimeBucket

__all__ = ["NoCandidateError", "Tally", "default_home"]

log = logging.getLogger("tally")

DEFAULT_OUTPUT_TOKENS = 512
# Complexity cells (``Envelope.cell`` ends in the level): they split a task
# type's calls in large shares that are meant to differ, so they are used
# on a quarter of the evidence other cells need (``cell_min_obs``): at 20,
# easy calls found the cheap model in 4 of the 10 seeds of
# tests/unit/test_complexity.py, at 5 in 8.
_LEVEL_SUFFIXES = ("|low", "|medium", "|high")


class NoCandidateError(InvalidFieldError):
    """No model in the pool is allowed for this call (``allowed_models`` /
    ``allowed_providers`` exclude them all)."""


@dataclass(frozen=True, slots=True)
class _Route:
    plan: Plan
    dropped: tuple[Dropped, ...]
    considered: tuple[tuple[str, float, float, float], ...]
    out_tokens: dict[str, float]
    notes: tuple[str, ...] = ()


class _Draws:
    """Seeded uniform and normal draws, pre-drawn in blocks.

    One ``numpy.random.Generator`` call per draw costs about a microsecond;
    a block of 4096 costs about as much as twenty. Thread safe.
    """

    def __init__(self, seed: int | tuple[int, int] | None, block: int = 4096) -> None:
        import numpy as np  # not at import time: `import tally_core` stays fast

        self._rng = np.random.default_rng(seed)
        self._block = block
        self._lock = threading.Lock()
        self._u: list[float] = []
        self._z: list[float] = []

    def uniform(self) -> float:
        with self._lock:
            if not self._u:
                self._u = self._rng.random(self._block).tolist()
            return self._u.pop()

    def normal(self) -> float:
        with self._lock:
            if not self._z:
                self._z = self._rng.standard_normal(self._block).tolist()
            return self._z.pop()


class Tally:
    """Route each LLM call to the cheapest model that is good enough, and learn.

    Parameters
    ----------
    models
        The pool: LiteLLM price-map names, or ``ModelSpec`` for custom models
        and price overrides.
    fallback
        Where calls go when no model clears the floor. Defaults to the most
        expensive model in the pool; added to the pool if missing.
    store
        A directory (diskcache state + SQLite ledger + spool), ``":memory:"``,
        a ``redis://`` URL (state shared by every replica; ledger and spool
        stay in ``$TALLY_HOME``), or a ``StateStore``. Default: ``$TALLY_HOME`` or ``~/.tally``.
    policy
        The routing policy; default ``FloorBandit`` built from
        ``max_violation_rate`` and ``confidence``.
    max_violation_rate
        The risk you accept: the share of a task type's calls that learning
        may send to a model below its floor (default 1%). How much Tally
        tries unproven cheaper models, and for how long, follows from it.
    confidence
        Posterior probability of clearing the floor at which a model that
        saves little is used (one that saves much is used sooner: see
        ``FloorBandit``).
    half_life
        Outcomes of a task type after which old evidence counts half.
        Default: evidence is kept until the drift detector sees a model
        change (then only its recent outcomes count).
    holdout
        Share of calls sent to the fallback as a control group for the savings
        report (0 to disable).
    seed
        Seeds every random draw, so a run is reproducible.
    background
        True (default): telemetry is applied by a worker thread. False applies
        it at once on the caller's thread (simulations, tests).
    ledger
        A path, ``":memory:"``, a ``postgresql://user:pass@host:5432/db`` URL
        (one call log shared by every replica; needs ``tally-router[postgres]``),
        a ``Ledger``, or None for the store's default.
    max_queue
        Telemetry events held in memory; beyond it they are spooled to disk
        (replayed by the worker as soon as it catches up).
    max_decisions
        Recent decisions kept for ``feedback`` by id and for the in-flight
        count: memory is bounded by this count whatever the call rate (older
        ids are still found in the ledger once their telemetry is recorded).
    org_policies
        Compliance rules per org: ``{"eu-team": {"allowed_providers": ["azure"]}}``
        (``allowed_models`` too). Every call of that org is narrowed to them,
        fallback, holdout and shadows included; a call they leave nothing for
        raises ``NoCandidateError`` naming the org and the rule
        (``tally_core.compliance``).
    breaker
        Failover: a circuit breaker per model from the errors telemetry
        reports (``tally_core.breaker``): True (default), False, or a
        ``Breakers`` with your thresholds. A model whose circuit is open is
        never routed to while another candidate fits; ``explain()`` says why.
    otel
        ``True`` or a ``tally_core.otel.OTelExporter``: an OpenTelemetry
        GenAI span per recorded call (the ``otel`` extra). Off by default.

    What Tally promises under crashes, forks, outages, overflow, bad input
    and other tenants is in ``docs/guarantees.md``.

    The ``confidence`` of a decision is the posterior probability that the
    chosen model's quality for this task type and context is at or above the
    floor (with no floor: within ``parity_tolerance`` of the best model seen).

    >>> with Tally(["gpt-4o-mini", "gpt-4o"], fallback="gpt-4o", store=":memory:",
    ...            seed=1, background=False) as tally:
    ...     d = tally.route({"task_type": "summarisation", "quality_floor": 0.8})
    ...     _ = tally.telemetry(d, quality=0.95, input_tokens=900, output_tokens=120)
    ...     d.phase, tally.stats("summarisation")[0]["calls"]
    ('explore', 1)
    """

    #: A route with no telemetry after this many seconds stops counting as
    #: in flight (calibration counts routes in flight; a caller may never report).
    pending_ttl_s: float = 300.0

    def __init__(
        self,
        models: Iterable[str | ModelSpec | Mapping[str, Any]],
        fallback: str | None = None,
        store: str | os.PathLike[str] | StateStore | None = None,
        *,
        policy: Policy | None = None,
        max_violation_rate: float = 0.01,
        confidence: float = 0.95,
        half_life: float | None = None,
        holdout: float = 0.0,
        seed: int | None = None,
        background: bool = True,
        ledger: str | os.PathLike[str] | Ledger | None = None,
        price_map: str | os.PathLike[str] | None = None,
        cell_min_obs: int = 20,
        error_cooldown: int = 50,
        max_queue: int = 100_000,
        refresh_interval_s: float = 1.0,
        max_decisions: int = 20_000,
        org_policies: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        breaker: Breakers | bool = True,
        otel: Any = False,
    ) -> None:
        self.catalog = Catalog(
            models,
            price_map=price_map or store_price_map(default_home() if store is None else store),
        )
        if fallback is None:
            fallback = max(
                self.catalog,
                key=lambda s: (s.output_cost_per_mtok or 0, s.input_cost_per_mtok or 0),
            ).name
        elif not isinstance(fallback, str):
            raise InvalidFieldError("fallback", f"must be a model name, got {fallback!r}")
        if fallback not in self.catalog:
            self.catalog.add(fallback)
        self.fallback = fallback
        # OpenTelemetry export (tally_core.otel): nothing is imported when off.
        self._otel = None
        if otel:
            from tally_core.otel import exporter_for

            self._otel = exporter_for(otel, self.catalog, fallback)
        self.policy = (
            policy
            if policy is not None
            else FloorBandit(max_violation_rate=max_violation_rate, enter=confidence)
        )
        if not isinstance(self.policy, Policy):
            raise InvalidFieldError("policy", f"must be a Policy, got {type(policy).__name__}")
        if half_life is not None and (
            isinstance(half_life, bool)
            or not (isinstance(half_life, (int, float)) and half_life >= 10)
        ):
            raise InvalidFieldError(
                "half_life", f"must be a number >= 10 or None (keep evidence), got {half_life!r}"
            )
        self.learn = LearnParams(half_life=math.inf if half_life is None else float(half_life))
        self.holdout = check_number("holdout", holdout, 0.0, 0.5) or 0.0
        self.cell_min_obs = cell_min_obs
        self.error_cooldown = error_cooldown
        self.refresh_interval_s = refresh_interval_s
        self.seed = seed
        self.org_policies = OrgPolicies(org_policies)
        if breaker is True:
            self.breakers: Breakers | None = Breakers()
        elif breaker is False or breaker is None:
            self.breakers = None
        elif isinstance(breaker, Breakers):
            self.breakers = breaker
        else:
            raise InvalidFieldError("breaker", "must be True, False or a Breakers")
        self._breaker_epoch = 0
        self._draws = _Draws(seed)
        self._windows = self._context_windows()

        self._owns_store = not isinstance(store, StateStore)
        self.store: StateStore = open_store(store)
        directory = self.store.directory
        # Rollout state lives in the store (shared by its replicas); a rollouts.json from
        # before that is imported once.
        self.rollouts = Rollouts(self.store, legacy_dir=directory)
        if isinstance(ledger, Ledger):
            self.ledger, self._owns_ledger = ledger, False
        else:
            where = (
                ledger
                if ledger is not None
                else (str(StoreDir(directory).ledger) if directory else ":memory:")
            )
            self.ledger, self._owns_ledger = open_ledger(where), True
        # Prices in force from now on: savings reports price each call at its time.
        self.ledger.sync_prices(self.catalog.price_rows())

        self._lock = threading.RLock()
        self._views: dict[TaskKey, dict[str, Any]] = {}
        # Cached plans per task state, so a batch of outcomes for one task
        # type invalidates only that task's plans.
        self._routes: dict[TaskKey, dict[tuple[Any, ...], _Route]] = {}
        self._env_cache: dict[Any, Envelope] = {}
        if isinstance(max_decisions, bool) or not (
            isinstance(max_decisions, int) and max_decisions >= 1
        ):
            raise InvalidFieldError(
                "max_decisions", f"must be an integer >= 1, got {max_decisions!r}"
            )
        # Memory is bounded by counts, whatever the call rate: at most
        # ``max_decisions`` recent decisions (for feedback by id) and as many
        # routes in flight; the TTL only ages out earlier.
        self.max_decisions = max_decisions
        self._init_decisions()
        self._seen_version = -1
        self._last_refresh = 0.0
        self._closed = False
        self._flush_waiters: list[Callable[[float | None], bool]] = []
        self.shadows = Shadows(seed)
        self._adopt_rollout_models()
        self._refresh(full=True)

        self.recorder = Recorder(self.store, self.ledger, self.catalog, self.learn)
        self.recorder.subscribe(self._on_recorded)
        self._queue = TelemetryQueue(
            self.recorder,
            spool_dir=str(StoreDir(directory).spool) if directory else None,
            max_queue=max_queue,
            background=background,
        )
        if directory:
            self._queue.replay_spool()
        self_ref = weakref.ref(self)
        if hasattr(os, "register_at_fork"):
            def _child() -> None:
                t = self_ref()
                if t is not None:
                    t._after_fork()

            os.register_at_fork(after_in_child=_child)

        def _close_at_exit() -> None:
            t = self_ref()
            if t is not None:
                t.close()

        self._atexit = _close_at_exit
        atexit.register(self._atexit)

    def _init_decisions(self) -> None:
        self._recent: OrderedDict[str, RouteDecision] = OrderedDict()
        # Routes not yet reported, per task and model (they shape calibration):
        # decisions in creation order; those reported; the age-out horizon.
        self._pending: dict[TaskKey, dict[str, int]] = {}
        self._pending_lock = threading.Lock()
        self._open: deque[RouteDecision] = deque()
        self._reported: set[str] = set()
        self._aged_until = 0.0

    def _after_fork(self) -> None:
        # A pre-fork server forks after Tally is built: the child keeps the
        # learned snapshot but gets fresh locks (a parent thread may have held
        # one), no routes in flight (they are the parent's), its own random
        # stream (or every child would explore alike) and, through the
        # ledger's and queue's own fork hooks, its own connection and worker.
        self._lock = threading.RLock()
        self._init_decisions()
        self._draws = _Draws(None if self.seed is None else (self.seed, os.getpid()))

    # -- routing -------------------------------------------------------------

    def route(
        self, envelope: Envelope | Mapping[str, Any] | None = None, **fields: Any
    ) -> RouteDecision:
        """Choose the model for one call. In memory only: no I/O, microseconds.

        ``envelope`` is an ``Envelope`` or a mapping of its fields; keyword
        arguments work too: ``tally.route(task_type="qa-simple")``.
        """
        if self._closed:
            raise ClosedError("this Tally is closed")
        env = self._envelope(envelope, fields)
        b = self.breakers
        if b is not None:
            if b.next_change <= time.time():
                b.tick()
            if b.epoch != self._breaker_epoch:
                self._breaker_epoch = b.epoch
                self._routes = {}  # a circuit moved: plan again
        key = self._route_key(env)
        tkey = env.task_key
        plans = self._routes.get(tkey)
        r = plans.get(key) if plans is not None else None
        if r is None:
            r = self._make_route(env)
        plan = r.plan
        pending = self._pending.get(tkey)
        if pending is None:
            pending = self._pending.setdefault(tkey, {})
        holdout = False
        if self.holdout and self._draws.uniform() < self.holdout:
            model, phase, conf, holdout = (
                plan.fallback,
                "fallback",
                plan.confidence.get(plan.fallback, 0.0),
                True,
            )
        else:
            choice = self.policy.pick(plan, self._draws.uniform, self._draws.normal, pending)
            model, phase, conf = choice.model, choice.phase, choice.confidence
            if self.rollouts:
                cand = self.rollouts.draw(env.org, env.task_type, model, self._draws.uniform)
                # The floor (and compliance, circuits, windows) hold: never a dropped model.
                if cand is not None and cand in self.catalog and all(
                    d.model != cand for d in r.dropped
                ):
                    model, phase, conf = cand, "explore", plan.confidence.get(cand, 0.0)
        if b is not None and b.state(model) != "closed":
            b.allow(model)  # a half-open circuit's probe call
        spec = self.catalog[model]
        out = env.expected_output_tokens or r.out_tokens.get(model, DEFAULT_OUTPUT_TOKENS)
        decision = RouteDecision(
            model=model,
            decision_id=new_id(),
            phase=phase,  # type: ignore[arg-type]
            confidence=conf,
            estimated_cost_usd=spec.estimate_cost_usd(env.input_tokens, int(out)),
            task_type=env.task_type,
            org=env.org,
            cell=env.cell,
            floor=plan.floor,
            stream=env.structure_type in ("prose", "mixed") and not env.tools_used,
            holdout=holdout,
            dropped=r.dropped,
            considered=r.considered,
            notes=r.notes,
            envelope=env,
            created_at=time.time(),
        )
        with self._pending_lock:
            pending[model] = pending.get(model, 0) + 1
            opened = self._open
            opened.append(decision)
            if len(opened) > self.max_decisions:
                self._forget(opened.popleft())
        recent = self._recent
        recent[decision.decision_id] = decision
        if len(recent) > self.max_decisions:
            try:
                recent.popitem(last=False)
            except KeyError:
                pass
        self._maybe_refresh()
        return decision

    async def aroute(
        self, envelope: Envelope | Mapping[str, Any] | None = None, **fields: Any
    ) -> RouteDecision:
        """``route`` for asyncio code; routing never blocks, so it just calls it."""
        return self.route(envelope, **fields)

    def _envelope(self, envelope: Any, fields: dict[str, Any]) -> Envelope:
        if isinstance(envelope, Envelope) and not fields:
            return self.org_policies.apply(envelope) if self.org_policies else envelope
        if envelope is None:
            data: Mapping[str, Any] = fields
        elif isinstance(envelope, Envelope):
            data = {**envelope.model_dump(exclude_unset=True), **fields}
        elif isinstance(envelope, Mapping):
            data = {**envelope, **fields} if fields else envelope
        else:
            raise InvalidFieldError(
                "envelope", f"must be an Envelope or a mapping, got {type(envelope).__name__}"
            )
        ck = envelope_cache_key(data)
        if ck is None:
            return self.org_policies.apply(coerce_envelope(data))
        env = self._env_cache.get(ck)
        if env is None:
            # Narrowed to the org's compliance rules before it is cached or used.
            env = self.org_policies.apply(coerce_envelope(data))
            if len(self._env_cache) > 4096:
                self._env_cache.clear()
            self._env_cache[ck] = env
        return env

    def _route_key(self, env: Envelope) -> tuple[Any, ...]:
        key = env.plan_key  # computed once per envelope
        if env.tokens_exact:
            # Plans differ only where the payload crosses a model's window.
            return (key, bisect.bisect_left(self._windows, env.min_context_tokens))
        return key

    def _make_route(self, env: Envelope) -> _Route:
        tkey = env.task_key
        snap = self._views.get(tkey)
        cells: dict[str, dict[str, ArmView]] = snap["cells"] if snap else {}
        views = cells.get(env.cell) or cells.get(TASK_CELL) or {}
        task_views = cells.get(TASK_CELL) or {}
        typical_in, typical_out = _typical_tokens(task_views)
        dropped: list[Dropped] = []
        cands: list[Candidate] = []
        allowed_any = False
        out_tokens: dict[str, float] = {}
        for spec in self.catalog:
            name = spec.name
            if env.allowed_models is not None and name not in env.allowed_models:
                dropped.append(Dropped(name, "not in allowed_models"))
                continue
            if env.allowed_providers is not None and spec.provider not in env.allowed_providers:
                dropped.append(Dropped(name, f"provider {spec.provider} not in allowed_providers"))
                continue
            allowed_any = True
            blocked = self.breakers.blocked(name) if self.breakers is not None else None
            if blocked is not None:
                dropped.append(Dropped(name, blocked))
                continue
            if spec.context_window is not None and spec.context_window < env.min_context_tokens:
                dropped.append(
                    Dropped(
                        name,
                        f"context window {spec.context_window} < {env.min_context_tokens} tokens",
                    )
                )
                continue
            if env.tools_used > 0 and not spec.supports_tools:
                dropped.append(Dropped(name, "no tool calling"))
                continue
            view = views.get(name, EMPTY_VIEW)
            out = (
                env.expected_output_tokens
                or view.output_tokens
                or typical_out
                or DEFAULT_OUTPUT_TOKENS
            )
            out_tokens[name] = out
            cost = spec.estimate_cost_usd(env.input_tokens, int(out))
            if env.max_cost_usd is not None and cost > env.max_cost_usd:
                dropped.append(
                    Dropped(name, f"estimated cost ${cost:.6f} > max_cost_usd ${env.max_cost_usd}")
                )
                continue
            tv = task_views.get(name)
            if (
                tv is not None
                and tv.error_share >= 0.4
                and tv.recent_errors >= 2.5
                and tv.since_error < self.error_cooldown
            ):
                dropped.append(
                    Dropped(
                        name,
                        f"erroring: {tv.error_share:.0%} of recent calls failed; "
                        f"retried after {self.error_cooldown - tv.since_error:.0f} more calls",
                    )
                )
                continue
            cands.append(Candidate(name, self._rank_cost(spec, env, view, typical_in, out), view))
        if not allowed_any:
            rules = self.org_policies.describe(env.org)
            raise NoCandidateError(
                "allowed_models" if env.allowed_models is not None else "allowed_providers",
                "no model in the pool is allowed"
                + (f" for org {env.org!r} (its rules: {rules})" if rules else "")
                + "; pool: " + ", ".join(self.catalog.names),
            )
        fallback = self.fallback
        fb = self.catalog[fallback]
        fb_blocked = self.breakers is not None and self.breakers.blocked(fallback) is not None
        if (
            (env.allowed_models is not None and fallback not in env.allowed_models)
            or (env.allowed_providers is not None and fb.provider not in env.allowed_providers)
            or (fb_blocked and cands)
        ):
            # Compliance (or an open circuit) beats the configured fallback: use the best
            # allowed model.
            pool = cands or [
                Candidate(s.name, 0.0, EMPTY_VIEW)
                for s in self.catalog
                if (env.allowed_models is None or s.name in env.allowed_models)
                and (env.allowed_providers is None or s.provider in env.allowed_providers)
            ]
            fallback = max(pool, key=lambda c: (c.view.mean, c.cost_usd)).name
            out_tokens.setdefault(fallback, DEFAULT_OUTPUT_TOKENS)
        plan = self.policy.plan(
            cands,
            env.quality_floor,
            fallback,
            time_sensitive=env.time_sensitive,
            memory=snap["memory"] if snap else EMPTY_MEMORY,
            task_type=env.task_type,
            complexity=env.complexity_level,
        )
        if not cands:
            dropped.append(Dropped(fallback, "no candidate fits: routed to the fallback anyway"))
        r = _Route(
            plan,
            tuple(dropped + plan.dropped),
            tuple(plan.considered),
            out_tokens,
            tuple(plan.notes),
        )
        if self._views.get(tkey) is snap:  # not if the worker refreshed meanwhile
            plans = self._routes.get(tkey)
            if plans is None or len(plans) > 1024:
                if len(self._routes) > 4096:
                    self._routes = {}
                plans = self._routes[tkey] = {}
            plans[self._route_key(env)] = r
        return r

    #: Calls of a model on a task type after which its realised cost per
    #: call counts as much as the catalog's estimate.
    cost_prior_calls: float = 3.0

    def _rank_cost(
        self, spec: ModelSpec, env: Envelope, view: ArmView, typical_in: float | None, out: float
    ) -> float:
        """What the policy ranks a model by: its realised cost per call on this
        task type, shrunk toward the catalog's estimate while it has few calls.
        The estimate prices the task's observed tokens (the envelope's when it
        states them), not a nominal payload."""
        tokens_in = env.input_tokens if env.tokens_exact or typical_in is None else typical_in
        estimate = spec.estimate_cost_usd(int(tokens_in), int(out))
        if view.cost_per_call is None or env.tokens_exact:
            return estimate
        k, n = self.cost_prior_calls, view.paid_calls
        return (view.cost_per_call * n + estimate * k) / (n + k)

    # -- telemetry -----------------------------------------------------------

    def telemetry(
        self,
        decision: RouteDecision | str | None = None,
        *,
        quality: float | None = None,
        success: bool | None = None,
        slugs: Sequence[str] | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        latency_ms: float | None = None,
        cost_usd: float | None = None,
        error: str | None = None,
        model: str | None = None,
        task_type: str | None = None,
        org: str | None = None,
        inferred: Sequence[str] | None = None,
    ) -> str:
        """Report the outcome of a call. Validates, enqueues, returns at once.

        ``decision`` is the ``RouteDecision`` (or its id). For a call Tally did
        not route (or an id from another process), pass ``model`` and
        ``task_type`` instead. ``quality`` is 0-1; ``success`` alone counts as
        1 or 0; ``success=False`` with an ``error`` counts as an availability
        failure (the model was down), not as low quality. ``inferred`` names
        the envelope fields an adapter inferred from the messages (default:
        the decision's ``inferred``); the ledger records the names. Returns
        the event id.
        """
        if self._closed:
            raise ClosedError("this Tally is closed")
        d = self._resolve(decision, model, task_type, org)
        if inferred is not None:
            d["inferred"] = inferred
        event = call_event(
            **d,
            quality=quality,
            success=success,
            slugs=slugs,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            cost_usd=cost_usd,
            error=error,
            local=d["routed"],
        )
        if self._otel is not None:
            self._otel.capture(event.event_id)
        self._queue.put(event)
        return event.event_id

    def feedback(
        self,
        decision: RouteDecision | str,
        *,
        quality: float | bool,
        slugs: Sequence[str] | None = None,
        model: str | None = None,
        task_type: str | None = None,
        org: str | None = None,
    ) -> None:
        """Late quality for a call already reported, joined by decision id.

        Replaces the quality the call was first counted with (or adds it, if
        none was given), in the bandit and in the ledger. Feedback is bound to
        the org that made the decision: ``org=`` naming another org is
        rejected, so one tenant can never move another's learned quality.
        """
        if self._closed:
            raise ClosedError("this Tally is closed")
        did = decision.decision_id if isinstance(decision, RouteDecision) else decision
        did = check_decision_id(did)
        if did not in self._recent:
            row = self.ledger.get(did)
            if row is not None:
                if org is not None and org != row["org"]:
                    raise InvalidFieldError(
                        "org", f"decision {did} was made for another org, not {brief(org)}"
                    )
                model, task_type, org = row["model"], row["task_type"], row["org"]
            elif model is None or task_type is None:
                raise UnknownDecisionError(
                    "decision",
                    f"unknown decision id {did!r}: it was not routed by this Tally and is not "
                    "in the ledger; pass model= and task_type= to record it anyway",
                )
        d = self._resolve(did, model, task_type, org)
        self._queue.put(
            feedback_event(
                decision_id=d["decision_id"],
                org=d["org"],
                task_type=d["task_type"],
                cell=d["cell"],
                model=d["model"],
                quality=quality,
                slugs=slugs,
            )
        )

    def _resolve(
        self, decision: Any, model: Any, task_type: Any, org: Any
    ) -> dict[str, Any]:
        if isinstance(decision, RouteDecision):
            d: RouteDecision | None = decision
        elif decision is None:
            d = None
        elif isinstance(decision, str):
            d = self._recent.get(check_decision_id(decision))
        else:
            raise InvalidFieldError(
                "decision",
                f"must be a RouteDecision, its id or None, got {type(decision).__name__}",
            )
        if d is not None:
            if org is not None and org != d.org:
                raise InvalidFieldError(
                    "org", f"decision {d.decision_id} was made for another org, not {brief(org)}"
                )
            mine = self._recent.get(d.decision_id)
            return {
                # Made by this process (not a RouteDecision built elsewhere):
                # its fields are valid already. An adapter may hand back a copy
                # that only marks the fields it inferred.
                "routed": mine is d or (
                    mine is not None and dataclasses.replace(mine, inferred=d.inferred) == d
                ),
                "decision_id": d.decision_id,
                "org": d.org,
                "task_type": d.task_type,
                "cell": d.cell,
                "model": d.model if model is None else check_model(model),
                "phase": d.phase,
                "confidence": d.confidence,
                "holdout": d.holdout,
                "envelope": _env_fields(d.envelope),
                "inferred": d.inferred,
            }
        if model is None or task_type is None:
            raise UnknownDecisionError(
                "decision",
                f"unknown decision id {brief(decision)}; pass the RouteDecision from route(), "
                "or model= and task_type= for a call Tally did not route",
            )
        if decision is not None:
            # An id another process routed: it stays bound to its org.
            row = self.ledger.get(decision)
            if row is not None:
                if org is not None and org != row["org"]:
                    raise InvalidFieldError(
                        "org", f"decision {decision} was made for another org, not {brief(org)}"
                    )
                org = row["org"]
        return {
            "routed": False,
            "inferred": (),
            "decision_id": decision,
            "org": "default" if org is None else check_org(org),
            "task_type": parse_task_type(task_type),
            "cell": TASK_CELL,
            "model": check_model(model),
            "phase": None,
            "confidence": None,
            "holdout": False,
            "envelope": None,
        }

    # -- what the recorder committed -------------------------------------------

    def _on_recorded(self, rec: Recorded) -> None:
        """Fold a committed batch into the routing snapshot (worker thread):
        the store returned the states it wrote, so nothing is read again."""
        committed = rec.committed
        if committed.states:
            with self._lock:
                views = dict(self._views)
                for key, state in committed.states.items():
                    views[key] = self._views_of(state)
                self._views = views
                for key in committed.states:
                    self._routes.pop(key, None)
                if committed.version is not None and committed.version == self._seen_version + 1:
                    # Only our own write since the last look; anything else
                    # (another process) is left for the periodic full refresh.
                    self._seen_version = committed.version
        if self.rollouts and rec.calls:
            made = self.rollouts.observe_batch(
                (ev.org, ev.task_type, ev.model, outcome(ev)[0]) for ev in rec.calls)
            for t in made:  # into the ledger, as a typed event through the queue
                self._queue.put(rollout_event(
                    model=t.model, org=t.org, task_type=t.task_type, action=t.action,
                    step=t.step, share=t.share, calls=t.calls,
                    quality=min(max(t.quality, 0.0), 1.0),
                    incumbent_quality=min(max(t.incumbent_quality, 0.0), 1.0),
                    reason=t.reason))
        b = self.breakers
        if b is not None:
            for ev in rec.calls:
                # Availability errors only (a low grade is the bandit's business).
                b.record(ev.model, errored=ev.success is False and ev.error is not None)
        # These routes are now in the snapshot: no longer "in flight".
        with self._pending_lock:
            for ev in rec.calls:
                if ev.local:
                    self._reported_call(ev)
            self._age_out()
        if self._otel is not None:  # the OTel hook: once the batch is applied
            self._otel.export(rec.rows)

    def _reported_call(self, ev: CallEvent) -> None:
        d = self._recent.get(ev.decision_id or "")
        if (
            d is not None
            and d.created_at >= self._aged_until
            and d.decision_id not in self._reported
        ):
            self._reported.add(d.decision_id)
            self._unpend(d)

    def _unpend(self, d: RouteDecision) -> None:
        pending = self._pending.get((d.org, d.task_type))
        if pending and pending.get(d.model, 0) > 0:
            pending[d.model] -= 1

    def _age_out(self) -> None:
        """Forget routes never reported within ``pending_ttl_s`` (lock held)."""
        cutoff = time.time() - self.pending_ttl_s
        opened = self._open
        while opened and opened[0].created_at < cutoff:
            self._forget(opened.popleft())
        # Never lowered (a larger ttl later must not revive routes already aged out).
        self._aged_until = max(self._aged_until, cutoff)

    def _forget(self, d: RouteDecision) -> None:
        # A route leaves the in-flight window (aged out, or over the count
        # cap); lock held.
        if d.decision_id in self._reported:
            self._reported.discard(d.decision_id)
        else:
            self._unpend(d)

    # -- the routing snapshot ------------------------------------------------

    def _maybe_refresh(self) -> None:
        # Other processes may have learned; look at most once per interval,
        # and only on the worker (route() itself never touches the store).
        now = time.monotonic()
        if now - self._last_refresh > self.refresh_interval_s:
            self._last_refresh = now
            threading.Thread(target=self._refresh_if_changed, daemon=True).start()

    def _refresh_if_changed(self) -> None:
        try:
            with self._pending_lock:
                self._age_out()
            if self.store.version() != self._seen_version:
                self._refresh(full=True)
            if self.rollouts.refresh():  # what other replicas' rollouts did
                self._adopt_rollout_models()
        except TallyError as exc:
            log.warning("tally could not refresh its routing snapshot: %s", exc)

    def refresh(self) -> None:
        """Reload learned state from the store (what other processes learned), and
        the rollouts' state."""
        self._refresh(full=True)
        if self.rollouts.refresh():
            self._adopt_rollout_models()

    def _adopt_rollout_models(self) -> None:
        """A model rolled out by another replica, or before a restart, joins the pool."""
        for name in self.rollouts.models:
            if name not in self.catalog:
                try:
                    self.add_model(name)
                except Exception:  # a custom model this process was not given
                    log.warning("tally: rollout model %s is not in the pool", name)

    def _refresh(self, full: bool = True) -> None:
        """Rebuild the routing snapshot from every task state in the store.
        (After a batch of its own, the worker folds in the states the store
        returned instead: see ``_on_recorded``.)"""
        with self._lock:
            version = self.store.version()
            self._views = {k: self._views_of(v) for k, v in self.store.load().items()}
            self._routes = {}
            self._seen_version = version

    def _views_of(self, state: dict[str, Any]) -> dict[str, Any]:
        clock = state["clock"]
        cells_out: dict[str, dict[str, ArmView]] = {}
        task = {
            m: arm_view(a, clock, self.learn) for m, a in state["cells"].get(TASK_CELL, {}).items()
        }
        cells_out[TASK_CELL] = task
        for cell, arms in state["cells"].items():
            if cell == TASK_CELL:
                continue
            merged = dict(task)
            need = self.cell_min_obs
            if cell.endswith(_LEVEL_SUFFIXES):
                need = max(need // 4, 1)
            for m, a in arms.items():
                v = arm_view(a, clock, self.learn)
                t = task.get(m)
                # Back off to the task level while the cell is sparse or says
                # the same thing; use the cell once it clearly differs.
                if t is None or (v.n >= need and abs(v.mean - t.mean) > 2.0 * v.se):
                    merged[m] = v
            cells_out[cell] = merged
        return {"clock": clock, "cells": cells_out, "memory": task_memory(state)}

    # -- introspection -------------------------------------------------------

    def stats(
        self,
        task_type: str,
        *,
        org: str = "default",
        quality_floor: float | None = None,
        envelope: Envelope | Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The bandit's view of a task type, one dict per model in the pool.

        Keys: ``model``, ``calls``, ``quality_obs``, ``mean_quality``,
        ``evidence`` (discounted outcomes), ``confidence`` (P(clears the
        floor)), ``phase`` (``exploit``, ``explore``, ``calibrate``,
        ``excluded``, ``idle`` or ``fallback``), ``mean_latency_ms``,
        ``cost_usd``, ``error_share``, ``est_cost_usd``.
        """
        env = self._envelope(
            envelope,
            {}
            if envelope is not None
            else {"task_type": task_type, "org": org, "quality_floor": quality_floor},
        )
        r = self._make_route(env)
        plan = r.plan
        snap = self._views.get((env.org, env.task_type))
        task_views = snap["cells"][TASK_CELL] if snap else {}
        dropped = {d.model: d.reason for d in r.dropped}
        calib = {name for name, n, target in plan.calibrate if n < target}
        explore = set(plan.explore)
        out = []
        for spec in self.catalog:
            v = task_views.get(spec.name, EMPTY_VIEW)
            if spec.name in dropped:
                phase = "excluded"
            elif spec.name in calib:
                phase = "calibrate"
            elif spec.name == plan.exploit:
                phase = "exploit"
            elif spec.name in explore:
                phase = "explore"
            elif plan.exploit is None and spec.name == plan.fallback:
                phase = "fallback"
            else:
                phase = "idle"
            conf = plan.confidence.get(spec.name)
            if conf is None and plan.floor is not None:
                conf = prob_clears(v, plan.floor)
            out.append(
                {
                    "model": spec.name,
                    "calls": v.calls,
                    "quality_obs": v.quality_obs,
                    "mean_quality": round(v.mean, 4) if v.n > 0 else None,
                    "evidence": round(v.n, 2),
                    "confidence": round(conf or 0.0, 4),
                    "phase": phase,
                    "reason": dropped.get(spec.name),
                    "mean_latency_ms": v.latency_ms,
                    "cost_usd": round(v.cost_usd, 8),
                    "error_share": round(v.error_share, 4),
                    "est_cost_usd": plan.costs.get(spec.name),
                }
            )
        return out

    def in_flight(self, task_type: str, org: str = "default") -> dict[str, int]:
        """Routes of a task type not yet reported, per model (calibration
        counts them, so it does not send a burst to one unproven model).
        A route with no telemetry for ``pending_ttl_s`` seconds is forgotten."""
        tt = parse_task_type(task_type)
        with self._pending_lock:
            self._age_out()
            return {m: n for m, n in self._pending.get((org, tt), {}).items() if n > 0}

    def task_types(self, org: str = "default") -> list[str]:
        """Task types with learned state for ``org``."""
        return sorted(t for (o, t) in self._views if o == org)

    def report(
        self,
        *,
        since: str | float | datetime | date | None = None,
        until: str | float | datetime | date | None = None,
        org: str | None = None,
        task_type: str | None = None,
        model: str | None = None,
        by: TimeBucket = "auto",
    ) -> Report:
        """Cost, calls, tokens, latency, errors and quality from the ledger, by
        model, org, task type and time; see ``tally_core.reports.report``."""
        from tally_core import reports

        self._ready_for_reports()
        return reports.report(
            self.ledger,
            since=since,
            until=until,
            org=org,
            task_type=task_type,
            model=model,
            by=by,
        )

    def savings(
        self,
        *,
        since: str | float | datetime | date | None = None,
        until: str | float | datetime | date | None = None,
        org: str | None = None,
        task_type: str | None = None,
        tolerance: float = 0.02,
        confidence: float = 0.95,
    ) -> Savings:
        """Actual cost against every call on the fallback at the prices in
        force, and quality against the holdout control group (``holdout=``);
        see ``tally_core.reports.savings``."""
        from tally_core import reports

        self._ready_for_reports()
        return reports.savings(
            self.ledger,
            fallback=self.fallback,
            catalog=self.catalog,
            since=since,
            until=until,
            org=org,
            task_type=task_type,
            tolerance=tolerance,
            confidence=confidence,
        )

    def export(
        self,
        out: str | os.PathLike[str] | IO[str],
        format: ExportFormat = "jsonl",
        *,
        since: str | float | datetime | date | None = None,
        until: str | float | datetime | date | None = None,
        org: str | None = None,
        task_type: str | None = None,
        model: str | None = None,
    ) -> int:
        """Write the call log as ``csv``, ``json`` or ``jsonl`` to a path or a
        text file; returns the rows written. See ``tally_core.reports.export``."""
        from tally_core import reports

        self._ready_for_reports()
        return reports.export(
            self.ledger,
            out,
            format,
            since=since,
            until=until,
            org=org,
            task_type=task_type,
            model=model,
        )

    def _ready_for_reports(self) -> None:
        if self._closed:
            raise ClosedError("this Tally is closed")
        self.flush()

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until queued telemetry is applied (True) or ``timeout`` passes.

        That includes the telemetry of calls an adapter routed whose outcome
        its host has yet to report (LiteLLM logs on its own threads after the
        call returned): each adapter registers a waiter (``add_flush_waiter``)
        and ``flush`` waits for those first, then for its own queue.
        """
        start = time.monotonic()
        ok = True
        for waiter in list(self._flush_waiters):
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            try:
                ok = bool(waiter(left)) and ok
            except Exception:  # an adapter's waiter must not break flush
                log.warning("tally: a flush waiter raised", exc_info=True)
                ok = False
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return self._queue.flush(left) and ok

    async def aflush(self, timeout: float | None = 5.0) -> bool:
        """``flush`` for asyncio code: waits on a thread, so the loop's logging tasks run."""
        import asyncio

        return await asyncio.to_thread(self.flush, timeout)

    def add_flush_waiter(self, waiter: Callable[[float | None], bool]) -> Callable[[], None]:
        """Make ``flush`` wait for ``waiter(timeout) -> bool`` first; returns its remover.

        For adapters: the waiter blocks until every call routed so far has
        been handed to ``telemetry()`` (True), or the timeout passes (False).
        """
        self._flush_waiters.append(waiter)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._flush_waiters.remove(waiter)

        return remove

    @property
    def telemetry_counts(self) -> dict[str, int]:
        """Events enqueued, applied, rejected (bad events, see
        ``ledger.rejected()``), retried, spooled, replayed, quarantined (spool
        files that could not be read), and drops by reason."""
        return {**self._queue.counts, **{f"dropped_{k}": v for k, v in self._queue.dropped.items()}}

    def _context_windows(self) -> list[int]:
        return sorted({s.context_window for s in self.catalog if s.context_window})

    # -- shadow tests ---------------------------------------------------------

    def shadow(
        self,
        candidate: str | ModelSpec | Mapping[str, Any],
        *,
        sample: float = 0.1,
        task_types: Iterable[str] | None = None,
        until: datetime | float | None = None,
    ) -> ShadowSpec:
        """Send a copy of a ``sample`` share of calls to ``candidate`` in the background.

        The adapters make the copies after the user's call has been answered
        and record each as a decision pinned to the candidate (tags
        ``shadow``, ``shadow-of:<id>``), so its outcomes are evidence for it.
        A candidate not in the pool is added (a ``ModelSpec`` or a price-map
        name). ``until``: a datetime or unix time when it stops by itself.
        See ``tally_core.shadow``.
        """
        if self._closed:
            raise ClosedError("this Tally is closed")
        name = candidate.name if isinstance(candidate, ModelSpec) else (
            str(candidate["name"]) if isinstance(candidate, Mapping) else candidate)
        if not isinstance(name, str) or not name:
            raise InvalidFieldError("candidate", "must be a model name or a ModelSpec")
        if name not in self.catalog:
            self.add_model(candidate)
        return self.shadows.start(name, sample=sample, task_types=task_types, until=until)

    # -- gradual rollouts -------------------------------------------------------

    def rollout(
        self,
        model: str | ModelSpec | Mapping[str, Any],
        *,
        steps: Iterable[float] = (0.01, 0.05, 0.25, 0.5, 1.0),
        min_calls: int = 200,
        max_quality_drop: float = 0.02,
        task_types: Iterable[str] | None = None,
    ) -> RolloutSpec:
        """Give ``model`` a growing share of each task type's calls; it rolls itself back
        when it is confidently worse than the incumbents (``tally_core.rollout``)."""
        if self._closed:
            raise ClosedError("this Tally is closed")
        name = model.name if isinstance(model, ModelSpec) else (
            str(model["name"]) if isinstance(model, Mapping) else model)
        if not isinstance(name, str) or not name:
            raise InvalidFieldError("model", "must be a model name or a ModelSpec")
        if name not in self.catalog:
            self.add_model(model)
        return self.rollouts.start(name, steps=steps, min_calls=min_calls,
                                   max_quality_drop=max_quality_drop, task_types=task_types)

    def stop_rollout(self, model: str) -> bool:
        """Stop a rollout (the model stays in the pool); False if none ran."""
        return self.rollouts.stop(model)

    def rollout_status(self, model: str) -> dict[str, dict[str, Any]]:
        """Per ``org/task_type``: step, share, status (running, done, rolled-back),
        calls at the step and the history of its steps."""
        return self.rollouts.status(model)

    def rollout_history(
        self, model: str | None = None, *, org: str | None = None,
        task_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every rollout transition in the ledger (advanced, done, rolled-back), oldest
        first: model, org, task type, step, share, calls, the candidate's and the
        incumbents' quality at the step, and the reason."""
        self._ready_for_reports()
        task = parse_task_type(task_type) if task_type is not None else None
        return self.ledger.rollouts(model=model, org=org, task_type=task)

    def stop_shadow(self, candidate: str) -> bool:
        """Stop a shadow test (its recorded outcomes stay); False if none ran."""
        return self.shadows.stop(candidate)

    def shadow_report(
        self, *, org: str | None = None, task_type: str | None = None
    ) -> list[ShadowPair]:
        """Each shadow test's paired figures per task type: quality difference with a 95%
        CI, cost and latency deltas (``tally_core.shadow.shadow_report``)."""
        self._ready_for_reports()
        task = parse_task_type(task_type) if task_type is not None else None
        from tally_core.ledger.query import LedgerQuery

        return shadow_report(self.ledger.rows(LedgerQuery(org=org, task_type=task)))

    def add_model(self, model: str | ModelSpec | Mapping[str, Any]) -> None:
        """Add a model to the pool; it starts in calibration."""
        with self._lock:
            self.catalog.add(model)
            self._windows = self._context_windows()
            self._routes = {}

    def remove_model(self, name: str) -> None:
        """Take a model out of the pool (its learned state is kept)."""
        if name == self.fallback:
            raise InvalidFieldError("model", f"{name!r} is the fallback; set another first")
        with self._lock:
            self.catalog.remove(name)
            self._windows = self._context_windows()
            self._routes = {}

    def close(self, timeout: float = 5.0) -> None:
        """Apply queued telemetry, spool what is left, release the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.shutdown(timeout)
        finally:
            atexit.unregister(self._atexit)
            if self._owns_ledger:
                self.ledger.close()
            if self._owns_store:
                self.store.close()

    def __enter__(self) -> Tally:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.store.directory or "memory"
        return f"Tally(models={self.catalog.names!r}, fallback={self.fallback!r}, store={where!r})"


def _typical_tokens(views: Mapping[str, ArmView]) -> tuple[float | None, float | None]:
    """Mean input and output tokens of a task type's calls, over every model
    (what a model not yet tried would be priced at)."""
    n_in = s_in = n_out = s_out = 0.0
    for v in views.values():
        if v.input_tokens is not None and v.paid_calls:
            n_in += v.paid_calls
            s_in += v.input_tokens * v.paid_calls
        if v.output_tokens is not None and v.paid_calls:
            n_out += v.paid_calls
            s_out += v.output_tokens * v.paid_calls
    return (s_in / n_in if n_in else None, s_out / n_out if n_out else None)


def _env_fields(env: Envelope | None) -> dict[str, Any] | None:
    if env is None:
        return None
    return {
        "structure_type": env.structure_type,
        "context_length": str(env.context_length),
        "tools_used": env.tools_used,
        "time_sensitive": env.time_sensitive,
        "quality_floor": env.quality_floor,
        "tags": list(env.tags),
    }

