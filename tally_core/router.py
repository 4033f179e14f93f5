"""Tally: wires the catalog, the policy, the state store, the telemetry queue
and the ledger into ``route`` / ``telemetry`` / ``feedback``."""

from __future__ import annotations

import atexit
import bisect
import itertools
import logging
import math
import os
import re
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tally_core.catalog import Catalog, ModelSpec, store_price_map
from tally_core.decision import Dropped, RouteDecision
from tally_core.envelope import Envelope, coerce_envelope, parse_task_type
from tally_core.errors import (
    ClosedError,
    InvalidFieldError,
    TallyError,
    UnknownDecisionError,
)
from tally_core.learning import (
    EMPTY_MEMORY,
    EMPTY_VIEW,
    TASK_CELL,
    ArmView,
    LearnParams,
    Update,
    arm_view,
    floor_key,
    task_memory,
)
from tally_core.ledger import Ledger
from tally_core.policy.bandit import FloorBandit
from tally_core.policy.base import Candidate, Plan, Policy
from tally_core.policy.floor import prob_clears
from tally_core.stores.base import StateStore, TaskKey
from tally_core.stores.disk import DiskStore
from tally_core.stores.memory import MemoryStore
from tally_core.telemetry import TelemetryQueue

if TYPE_CHECKING:
    from datetime import date, datetime
    from typing import IO

    from tally_core.reports import ExportFormat, Report, Savings, TimeBucket

__all__ = ["NoCandidateError", "Tally", "default_home"]

log = logging.getLogger("tally")

DEFAULT_OUTPUT_TOKENS = 512
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_ERROR = re.compile(r"^[A-Za-z0-9_.:/-]{1,120}$")


class NoCandidateError(InvalidFieldError):
    """No model in the pool is allowed for this call (``allowed_models`` /
    ``allowed_providers`` exclude them all)."""


def default_home() -> str:
    """``$TALLY_HOME`` or ``~/.tally``."""
    return os.environ.get("TALLY_HOME") or str(Path("~/.tally").expanduser())


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

    def __init__(self, seed: int | None, block: int = 4096) -> None:
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


def _num(field: str, value: Any, lo: float = 0.0, hi: float = math.inf) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidFieldError(field, f"must be a number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        limit = f"between {lo:g} and {hi:g}" if hi != math.inf else f">= {lo:g}"
        raise InvalidFieldError(field, f"must be {limit}, got {value!r}")
    return v


def _int(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidFieldError(field, f"must be an integer >= 0, got {value!r}")
    return int(value)


def _slugs(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidFieldError("slugs", f"must be a list of slugs, got {type(value).__name__}")
    if len(value) > 32:
        raise InvalidFieldError("slugs", f"at most 32 slugs, got {len(value)}")
    out = []
    for s in value:
        if not isinstance(s, str) or not _SLUG.match(s.lower()):
            raise InvalidFieldError(
                "slugs",
                f"each slug must be 1-64 lowercase letters, digits or _.:- "
                f"(like 'hallucination'), got {s!r}",
            )
        out.append(s.lower())
    return out


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
        A path, ``":memory:"``, a ``Ledger``, or None for the store's default.

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
        self.holdout = _num("holdout", holdout, 0.0, 0.5) or 0.0
        self.cell_min_obs = cell_min_obs
        self.error_cooldown = error_cooldown
        self.refresh_interval_s = refresh_interval_s
        self.seed = seed
        self._draws = _Draws(seed)
        self._windows = self._context_windows()

        self._owns_store = not isinstance(store, StateStore)
        if isinstance(store, StateStore):
            self.store: StateStore = store
        elif isinstance(store, str) and store.startswith(("redis://", "rediss://", "unix://")):
            from tally_core.stores.redis_store import RedisStore

            self.store = RedisStore(store)
        elif store is None or str(store) != ":memory:":
            self.store = DiskStore(Path(str(store) if store is not None else default_home()))
        else:
            self.store = MemoryStore()
        directory = self.store.directory
        if isinstance(ledger, Ledger):
            self.ledger, self._owns_ledger = ledger, False
        else:
            where = (
                ledger
                if ledger is not None
                else (str(Path(directory) / "ledger.sqlite3") if directory else ":memory:")
            )
            self.ledger, self._owns_ledger = Ledger(where), True
        # Prices in force from now on: savings reports price each call at its time.
        self.ledger.sync_prices(self.catalog.price_rows())

        self._lock = threading.RLock()
        self._views: dict[TaskKey, dict[str, Any]] = {}
        # Cached plans per task state, so a batch of outcomes for one task
        # type invalidates only that task's plans.
        self._routes: dict[TaskKey, dict[tuple[Any, ...], _Route]] = {}
        self._env_cache: dict[Any, Envelope] = {}
        self._recent: OrderedDict[str, RouteDecision] = OrderedDict()
        self._recent_max = 100_000
        # Routes not yet reported, per task and model (they shape calibration):
        # decisions in creation order; those reported; the age-out horizon.
        self._pending: dict[TaskKey, dict[str, int]] = {}
        self._pending_lock = threading.Lock()
        self._open: deque[RouteDecision] = deque()
        self._reported: set[str] = set()
        self._aged_until = 0.0
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)
        self._events = itertools.count(1)
        self._seen_version = -1
        self._last_refresh = 0.0
        self._closed = False
        self._refresh(full=True)

        self._queue = TelemetryQueue(
            self._process,
            spool_dir=str(Path(directory) / "spool") if directory else None,
            max_queue=max_queue,
            background=background,
        )
        if directory:
            self._queue.replay_spool()
        self_ref = weakref.ref(self)

        def _close_at_exit() -> None:
            t = self_ref()
            if t is not None:
                t.close()

        self._atexit = _close_at_exit
        atexit.register(self._atexit)

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
        spec = self.catalog[model]
        out = env.expected_output_tokens or r.out_tokens.get(model, DEFAULT_OUTPUT_TOKENS)
        decision = RouteDecision(
            model=model,
            decision_id=f"{self._id_prefix}-{next(self._ids):x}",
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
        self._open.append(decision)
        recent = self._recent
        recent[decision.decision_id] = decision
        if len(recent) > self._recent_max:
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
            return envelope
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
        try:
            ck: Any = tuple(data.items())
            hash(ck)
        except TypeError:
            return coerce_envelope(data)
        env = self._env_cache.get(ck)
        if env is None:
            env = coerce_envelope(data)
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
            raise NoCandidateError(
                "allowed_models" if env.allowed_models is not None else "allowed_providers",
                "no model in the pool is allowed; pool: " + ", ".join(self.catalog.names),
            )
        fallback = self.fallback
        fb = self.catalog[fallback]
        if (env.allowed_models is not None and fallback not in env.allowed_models) or (
            env.allowed_providers is not None and fb.provider not in env.allowed_providers
        ):
            # Compliance beats the configured fallback: use the best allowed model.
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
    ) -> str:
        """Report the outcome of a call. Validates, enqueues, returns at once.

        ``decision`` is the ``RouteDecision`` (or its id). For a call Tally did
        not route (or an id from another process), pass ``model`` and
        ``task_type`` instead. ``quality`` is 0-1; ``success`` alone counts as
        1 or 0; ``success=False`` with an ``error`` counts as an availability
        failure (the model was down), not as low quality. Returns the event id.
        """
        if self._closed:
            raise ClosedError("this Tally is closed")
        q = _num("quality", quality, 0.0, 1.0)
        if success is not None and not isinstance(success, bool):
            raise InvalidFieldError("success", f"must be True or False, got {success!r}")
        sl = _slugs(slugs)
        it = _int("input_tokens", input_tokens)
        ot = _int("output_tokens", output_tokens)
        lat = _num("latency_ms", latency_ms)
        cost = _num("cost_usd", cost_usd)
        if error is not None and (not isinstance(error, str) or not _ERROR.match(error)):
            raise InvalidFieldError(
                "error",
                "must be an error class or code of 1-120 letters, digits or _.:/- "
                f"(never a message, which may quote the prompt), got {error!r}",
            )
        d = self._resolve(decision, model, task_type, org)
        event = {
            "kind": "call",
            "event_id": f"{self._id_prefix}-e{next(self._events):x}",
            "ts": time.time(),
            "quality": q,
            "success": success,
            "slugs": sl,
            "input_tokens": it,
            "output_tokens": ot,
            "latency_ms": lat,
            "cost_usd": cost,
            "error": error,
            **d,
        }
        event["local"] = d["phase"] is not None and d["decision_id"] in self._recent
        self._queue.put(event)
        return str(event["event_id"])

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
        none was given), in the bandit and in the ledger.
        """
        if self._closed:
            raise ClosedError("this Tally is closed")
        if isinstance(quality, bool):
            quality = 1.0 if quality else 0.0
        q = _num("quality", quality, 0.0, 1.0)
        if q is None:
            raise InvalidFieldError("quality", "is required")
        sl = _slugs(slugs)
        did = decision.decision_id if isinstance(decision, RouteDecision) else decision
        if not isinstance(did, str) or not did:
            raise InvalidFieldError("decision", f"must be a RouteDecision or its id, got {did!r}")
        if (
            did not in self._recent
            and self.ledger.get(did) is None
            and (model is None or task_type is None)
        ):
            raise UnknownDecisionError(
                "decision",
                f"unknown decision id {did!r}: it was not routed by this Tally and is not "
                "in the ledger; pass model= and task_type= to record it anyway",
            )
        d = self._resolve(did, model, task_type, org)
        self._queue.put(
            {
                "kind": "feedback",
                "event_id": f"{self._id_prefix}-e{next(self._events):x}",
                "ts": time.time(),
                "quality": q,
                "slugs": sl,
                **d,
            }
        )

    def _resolve(
        self, decision: Any, model: str | None, task_type: str | None, org: str | None
    ) -> dict[str, Any]:
        if isinstance(decision, RouteDecision):
            d: RouteDecision | None = decision
        elif decision is None or isinstance(decision, str):
            d = self._recent.get(decision) if decision else None
        else:
            raise InvalidFieldError(
                "decision",
                f"must be a RouteDecision, its id or None, got {type(decision).__name__}",
            )
        if d is not None:
            env = d.envelope
            return {
                "decision_id": d.decision_id,
                "org": d.org,
                "task_type": d.task_type,
                "cell": d.cell,
                "model": model or d.model,
                "phase": d.phase,
                "confidence": d.confidence,
                "holdout": d.holdout,
                "envelope": _env_fields(env),
            }
        if model is None or task_type is None:
            raise UnknownDecisionError(
                "decision",
                f"unknown decision id {decision!r}; pass the RouteDecision from route(), "
                "or model= and task_type= for a call Tally did not route",
            )
        if not isinstance(model, str) or not model:
            raise InvalidFieldError("model", f"must be a model name, got {model!r}")
        tt = parse_task_type(task_type)
        o = org or "default"
        if not isinstance(o, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}$", o):
            raise InvalidFieldError("org", f"must be an org id, got {org!r}")
        return {
            "decision_id": decision if isinstance(decision, str) else None,
            "org": o,
            "task_type": tt,
            "cell": TASK_CELL,
            "model": model,
            "phase": None,
            "confidence": None,
            "holdout": False,
            "envelope": None,
        }

    # -- the worker ----------------------------------------------------------

    def _process(self, batch_id: str, events: list[dict[str, Any]]) -> None:
        """Apply one batch to the state store, then the ledger (worker thread)."""
        updates: list[Update] = []
        rows: list[dict[str, Any]] = []
        feedback: list[tuple[str, float, list[str] | None, float]] = []
        by_decision: dict[str, dict[str, Any]] = {}
        counted: dict[TaskKey, int] = {}  # outcomes of this batch so far, per task

        def add(u: Update) -> None:
            updates.append(u)
            if u.replaces is None:
                k = (u.org, u.task_type)
                counted[k] = counted.get(k, 0) + 1

        for ev in events:
            key = (ev["org"], ev["task_type"])
            snap = self._views.get(key)
            clock = (snap["clock"] if snap else 0.0) + counted.get(key, 0)
            if ev["kind"] == "feedback":
                orig = by_decision.get(ev["decision_id"] or "") or (
                    self.ledger.get(ev["decision_id"]) if ev["decision_id"] else None
                )
                q = ev["quality"]
                if orig is not None:
                    prev = orig.get("quality_applied")
                    add(
                        Update(
                            orig["org"],
                            orig["task_type"],
                            orig["cell"] or TASK_CELL,
                            orig["model"],
                            q,
                            False,
                            None,
                            None,
                            0.0,
                            replaces=prev,
                            at=orig.get("clock"),
                            outcome_only=prev is None,
                        )
                    )
                    orig["quality_applied"] = q
                    feedback.append((ev["decision_id"], q, ev["slugs"], ev["ts"]))
                else:  # no call on record: count the quality on its own
                    add(
                        Update(
                            ev["org"],
                            ev["task_type"],
                            ev["cell"],
                            ev["model"],
                            q,
                            False,
                            None,
                            None,
                            0.0,
                            outcome_only=True,
                        )
                    )
                continue
            q, success, error = ev["quality"], ev["success"], ev["error"]
            errored = False
            if q is None:
                if success is True:
                    q = 1.0
                elif success is False:
                    if error:
                        errored = True  # the provider failed: availability, not quality
                    else:
                        q = 0.0
            if success is None and (error is not None or q is not None):
                # Inferred when the event says anything; a call reported with
                # no outcome at all (a cancelled stream) stays unknown (NULL).
                success = error is None and not errored
            spec = self.catalog[ev["model"]] if ev["model"] in self.catalog else None
            if spec is None:
                found = self.catalog.lookup(ev["model"])
                spec = ModelSpec(name=ev["model"], **found) if found else None
            cost = ev["cost_usd"]
            if cost is None:
                cost = (
                    spec.estimate_cost_usd(ev["input_tokens"] or 0, ev["output_tokens"] or 0)
                    if spec is not None
                    else 0.0
                )
            envf = ev.get("envelope")
            add(
                Update(
                    ev["org"],
                    ev["task_type"],
                    ev["cell"],
                    ev["model"],
                    q,
                    errored,
                    ev["latency_ms"],
                    ev["output_tokens"],
                    cost,
                    input_tokens=ev["input_tokens"],
                    phase=None if ev.get("holdout") else ev["phase"],
                    floor=floor_key(envf.get("quality_floor")) if envf else None,
                )
            )
            env = ev.get("envelope") or {}
            row = {
                "event_id": ev["event_id"],
                "decision_id": ev["decision_id"],
                "ts": ev["ts"],
                "org": ev["org"],
                "task_type": ev["task_type"],
                "cell": ev["cell"],
                **env,
                "model": ev["model"],
                "phase": ev["phase"],
                "confidence": ev["confidence"],
                "holdout": ev["holdout"],
                "input_tokens": ev["input_tokens"],
                "output_tokens": ev["output_tokens"],
                "latency_ms": ev["latency_ms"],
                "cost_usd": cost,
                "input_cost_per_mtok": spec.input_cost_per_mtok if spec else None,
                "output_cost_per_mtok": spec.output_cost_per_mtok if spec else None,
                "success": success,
                "quality": ev["quality"] if ev["quality"] is not None else q,
                "slugs": ev["slugs"],
                "error": error,
                "quality_applied": q,
                "clock": clock + 1,
            }
            rows.append(row)
            if ev["decision_id"]:
                by_decision[ev["decision_id"]] = row
        self.store.apply(batch_id, updates, self.learn)
        self.ledger.append(rows)
        for did, q, sl, ts in feedback:
            self.ledger.set_feedback(did, q, sl, ts)
        self._refresh(keys={(u.org, u.task_type) for u in updates})
        # These routes are now in the snapshot: no longer "in flight".
        with self._pending_lock:
            for ev in events:
                if ev.get("local") and ev["kind"] == "call":
                    d = self._recent.get(ev["decision_id"])
                    if (
                        d is not None
                        and d.created_at >= self._aged_until
                        and d.decision_id not in self._reported
                    ):
                        self._reported.add(d.decision_id)
                        self._unpend(d)
            self._age_out()

    def _unpend(self, d: RouteDecision) -> None:
        pending = self._pending.get((d.org, d.task_type))
        if pending and pending.get(d.model, 0) > 0:
            pending[d.model] -= 1

    def _age_out(self) -> None:
        """Forget routes never reported within ``pending_ttl_s`` (lock held)."""
        cutoff = time.time() - self.pending_ttl_s
        opened, reported = self._open, self._reported
        while opened and opened[0].created_at < cutoff:
            d = opened.popleft()
            if d.decision_id in reported:
                reported.discard(d.decision_id)
            else:
                self._unpend(d)
        # Never lowered (a larger ttl later must not revive routes already aged out).
        self._aged_until = max(self._aged_until, cutoff)

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
        except TallyError as exc:
            log.warning("tally could not refresh its routing snapshot: %s", exc)

    def refresh(self) -> None:
        """Reload learned state from the store (what other processes learned)."""
        self._refresh(full=True)

    def _refresh(self, keys: set[TaskKey] | None = None, full: bool = False) -> None:
        """Rebuild the routing snapshot: every task state, or only ``keys``
        (those the worker just changed), dropping only their cached plans."""
        with self._lock:
            seen = self._seen_version
            if full or keys is None:
                version = self.store.version()
                self._views = {k: self._views_of(v) for k, v in self.store.load().items()}
                self._routes = {}
                self._seen_version = version
                return
            states = self.store.load(keys)
            version = self.store.version()
            views = dict(self._views)
            for key in keys:
                state = states.get(key)
                if state is None:
                    views.pop(key, None)
                else:
                    views[key] = self._views_of(state)
            self._views = views
            for key in keys:
                self._routes.pop(key, None)
            if version == seen + 1:
                # Only our own write since the last look; anything else
                # (another process) is left for the periodic full refresh.
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
            for m, a in arms.items():
                v = arm_view(a, clock, self.learn)
                t = task.get(m)
                # Back off to the task level while the cell is sparse or says
                # the same thing; use the cell once it clearly differs.
                if t is None or (v.n >= self.cell_min_obs and abs(v.mean - t.mean) > 2.0 * v.se):
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
        """Wait until queued telemetry is applied (True) or ``timeout`` passes."""
        ok = self._queue.flush(timeout)
        return ok

    @property
    def telemetry_counts(self) -> dict[str, int]:
        """Events enqueued, applied, retried, spooled, replayed, and drops by reason."""
        return {**self._queue.counts, **{f"dropped_{k}": v for k, v in self._queue.dropped.items()}}

    def _context_windows(self) -> list[int]:
        return sorted({s.context_window for s in self.catalog if s.context_window})

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
