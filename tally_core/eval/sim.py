"""A workload simulator: a model pool, task types with a traffic mix and a true
quality per (task type, model), and routers compared on the same seeded stream.

Scenarios are JSON files (``tally_core/eval/scenarios/*.json``, or any path):

.. code-block:: json

    {"name": "tiny", "calls": 2000, "fallback": "gpt-4o",
     "models": ["gpt-4o-mini", "gpt-4o"],
     "latency_ms": {"gpt-4o-mini": 600, "gpt-4o": 2100},
     "tasks": {"classification": {"share": 0.6, "floor": 0.8,
                                  "quality": {"gpt-4o-mini": 0.93, "gpt-4o": 0.95}},
               "reasoning": {"share": 0.4, "floor": 0.85, "outcome": "bernoulli",
                             "quality": {"gpt-4o-mini": 0.55, "gpt-4o": 0.93}}},
     "events": [{"at": 0.5, "task": "classification", "model": "gpt-4o-mini",
                 "quality": 0.6}]}

A task's ``outcome`` is ``beta`` (a graded 0-1 score around the true mean
with the spread of a Beta of that ``concentration``) or ``bernoulli`` (pass/fail). Events change
the world mid-run: a new quality, a model joining the pool (``"join": true``),
or an outage (``"error_rate"`` for a stretch given by ``"until"``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from tally_core.catalog import Catalog, ModelSpec
from tally_core.errors import InvalidFieldError
from tally_core.policy.complexity import (
    THRESHOLD_GROUPS,
    THRESHOLD_RULES,
    rule_tier,
    tier_position,
)

__all__ = [
    "CheapestRouter",
    "EpsilonGreedyRouter",
    "FixedRouter",
    "OracleRouter",
    "Scenario",
    "SimCall",
    "SimResult",
    "SimRouter",
    "TallyRouter",
    "ThompsonRouter",
    "ThresholdRouter",
    "baseline_routers",
    "load_scenario",
    "run_comparison",
    "scenario_names",
    "simulate",
]


_LEVELS = ("low", "medium", "high")


@dataclass
class TaskSpec:
    name: str
    share: float
    floor: float | None
    quality: dict[str, float]
    outcome: str = "beta"
    concentration: float = 30.0
    input_tokens: int = 1_000
    output_tokens: int = 300
    envelope: dict[str, Any] = field(default_factory=dict)
    # Complexity level -> share of the task's calls; each call then carries a
    # complexity score in its envelope, and ``quality_by_complexity`` (level
    # -> model -> true quality) overrides ``quality`` for calls of that level.
    complexity: dict[str, float] = field(default_factory=dict)
    quality_by_complexity: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Event:
    at: float  # share of the run (0-1) when it happens
    model: str
    task: str | None = None  # None: every task
    quality: float | None = None
    join: bool = False
    error_rate: float | None = None
    until: float | None = None


@dataclass
class Scenario:
    name: str
    models: list[str | dict[str, Any]]
    fallback: str
    tasks: dict[str, TaskSpec]
    calls: int = 20_000
    latency_ms: dict[str, float] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    warmup: int = 100  # calls per task type before violations count
    parity_tolerance: float = 0.02
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        try:
            tasks = {
                name: TaskSpec(name=name, **{k: v for k, v in spec.items()})
                for name, spec in data["tasks"].items()
            }
            events = [Event(**e) for e in data.get("events", [])]
            sc = cls(
                name=data["name"],
                models=list(data["models"]),
                fallback=data["fallback"],
                tasks=tasks,
                calls=int(data.get("calls", 20_000)),
                latency_ms=dict(data.get("latency_ms", {})),
                events=events,
                warmup=int(data.get("warmup", 100)),
                parity_tolerance=float(data.get("parity_tolerance", 0.02)),
                description=data.get("description", ""),
            )
        except KeyError as exc:
            raise InvalidFieldError(str(exc.args[0]), "missing from the scenario") from None
        except TypeError as exc:
            raise InvalidFieldError("scenario", str(exc)) from None
        names = {m if isinstance(m, str) else m["name"] for m in sc.models}
        for t in sc.tasks.values():
            missing = names - set(t.quality)
            if missing:
                raise InvalidFieldError(
                    f"tasks.{t.name}.quality", f"no true quality for {sorted(missing)}"
                )
            if t.outcome not in ("beta", "bernoulli"):
                raise InvalidFieldError(f"tasks.{t.name}.outcome", "must be beta or bernoulli")
            for key, levels in (
                ("complexity", t.complexity),
                ("quality_by_complexity", t.quality_by_complexity),
            ):
                bad = sorted(set(levels) - set(_LEVELS))
                if bad:
                    raise InvalidFieldError(
                        f"tasks.{t.name}.{key}", f"levels must be low, medium, high, got {bad}"
                    )
            if t.complexity and not all(v >= 0 for v in t.complexity.values()):
                raise InvalidFieldError(f"tasks.{t.name}.complexity", "shares must be >= 0")
            if t.complexity and sum(t.complexity.values()) <= 0:
                raise InvalidFieldError(f"tasks.{t.name}.complexity", "shares must sum above 0")
        return sc

    def model_names(self) -> list[str]:
        return [m if isinstance(m, str) else m["name"] for m in self.models]


def scenario_names() -> list[str]:
    """Scenarios shipped with Tally."""
    folder = resources.files("tally_core.eval").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (``seed-landscape``) or a JSON file by path."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        text = p.read_text(encoding="utf-8")
    else:
        res = resources.files("tally_core.eval").joinpath("scenarios", f"{name_or_path}.json")
        if not res.is_file():
            raise InvalidFieldError(
                "scenario", f"no scenario {name_or_path!r}; shipped: {', '.join(scenario_names())}"
            )
        text = res.read_text(encoding="utf-8")
    return Scenario.from_dict(json.loads(text))


@dataclass(frozen=True)
class SimCall:
    """One call of the stream, as the world will answer it whatever model serves it.

    ``outcome(model)`` is ``(quality or None, errored, latency_ms)``: the very
    draw ``simulate`` scores the call with. A router that plays the provider
    itself (``tally_litellm.demo`` answers LiteLLM mock calls with it) gets
    each call through an optional ``prepare(call)`` method, before ``choose``.
    """

    index: int
    task: TaskSpec
    envelope: dict[str, Any]
    pool: Sequence[str]
    input_tokens: int
    output_tokens: int
    outcome: Callable[[str], tuple[float | None, bool, float]]


class SimRouter(Protocol):
    """What the simulator drives: choose a model, then learn the outcome.

    Optional: ``prepare(call: SimCall)``, called before each ``choose``.
    """

    name: str

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str: ...

    def observe(
        self,
        task: TaskSpec,
        model: str,
        quality: float | None,
        errored: bool,
        input_tokens: int,
        output_tokens: int,
        latency_ms: float,
        cost_usd: float,
    ) -> None: ...


class TallyRouter:
    """Tally itself: by default a new one in memory, applying telemetry at once
    (reproducible).

    ``tally`` drives an existing ``Tally`` instead (any store; ``tally demo``
    does), its calls under ``org``; with a background worker, ``flush_every``
    calls wait for it to catch up, since simulated traffic comes far faster
    than real. ``on_call(n)`` is told after each call (a progress bar).
    ``complexity=False`` routes without the calls' complexity (the bandit
    learns per task type and its other cells only); ``name`` names it in results.
    """

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        tally: Any = None,
        org: str | None = None,
        flush_every: int = 0,
        on_call: Callable[[int], None] | None = None,
        complexity: bool = True,
        name: str = "tally",
        **tally_kwargs: Any,
    ) -> None:
        from tally_core.router import Tally

        self.name = name
        self._complexity = complexity
        self._all = {(m if isinstance(m, str) else m["name"]): m for m in scenario.models}
        if tally is None:
            joined = {e.model for e in scenario.events if e.join}
            pool = [spec for name, spec in self._all.items() if name not in joined]
            tally = Tally(
                [ModelSpec(**m) if isinstance(m, dict) else m for m in pool],
                fallback=scenario.fallback,
                store=":memory:",
                seed=seed,
                background=False,
                **tally_kwargs,
            )
            self._owns = True
        else:
            self._owns = False
        self.tally = tally
        self._org = {"org": org} if org else {}
        self._flush_every = flush_every
        self._on_call = on_call
        self.calls = 0
        self.phases: list[str] = []
        self._last: Any = None

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        for name in pool:
            if name not in self.tally.catalog:
                spec = self._all[name]
                self.tally.add_model(ModelSpec(**spec) if isinstance(spec, dict) else spec)
        if not self._complexity and "complexity" in envelope:
            envelope = {k: v for k, v in envelope.items() if k != "complexity"}
        d = self.tally.route(envelope, **self._org)
        self._last = d
        self.phases.append(d.phase)
        return str(d.model)

    def observe(
        self,
        task: TaskSpec,
        model: str,
        quality: float | None,
        errored: bool,
        input_tokens: int,
        output_tokens: int,
        latency_ms: float,
        cost_usd: float,
    ) -> None:
        self.tally.telemetry(
            self._last,
            quality=quality,
            success=not errored,
            error="ProviderError" if errored else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            cost_usd=cost_usd,
        )
        self.calls += 1
        if self._flush_every and self.calls % self._flush_every == 0:
            self.tally.flush(5.0)
        if self._on_call is not None:
            self._on_call(self.calls)

    def close(self) -> None:
        """Close the ``Tally`` this router made (not one it was given)."""
        if self._owns:
            self.tally.close()


class OracleRouter:
    """Knows the true qualities: the cheapest model meeting the floor, per call.

    ``costs`` ranks models; it takes a model name, or a task and a model name
    (``call_cost=True``). ``OracleRouter.for_scenario`` ranks by the catalog
    price of the task's call (input and output tokens), not by input price.
    """

    name = "oracle"

    def __init__(
        self,
        truth: Callable[[TaskSpec, str], float],
        costs: Callable[..., float],
        tolerance: float,
        *,
        call_cost: bool = False,
    ) -> None:
        self._truth, self._costs, self._tol = truth, costs, tolerance
        self._call_cost = call_cost

    @classmethod
    def for_scenario(cls, scenario: Scenario) -> OracleRouter:
        cost = _call_cost_fn(scenario)
        return cls(lambda t, m: t.quality[m], cost, scenario.parity_tolerance, call_cost=True)

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        bar = _bar(task, {m: self._truth(task, m) for m in pool}, self._tol)
        ok = [m for m in pool if self._truth(task, m) >= bar]
        if not ok:
            return max(pool, key=lambda m: self._truth(task, m))
        if self._call_cost:
            return min(ok, key=lambda m: self._costs(task, m))
        return min(ok, key=self._costs)

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


def _catalog(scenario: Scenario) -> Catalog:
    return Catalog([ModelSpec(**m) if isinstance(m, dict) else m for m in scenario.models])


def _call_cost_fn(scenario: Scenario) -> Callable[[TaskSpec, str], float]:
    """Catalog price of a task's typical call on a model (cached)."""
    catalog = _catalog(scenario)
    cache: dict[tuple[str, str], float] = {}

    def cost(task: TaskSpec, model: str) -> float:
        key = (task.name, model)
        c = cache.get(key)
        if c is None:
            c = cache[key] = catalog[model].estimate_cost_usd(task.input_tokens, task.output_tokens)
        return c

    return cost


def _success_bar(task: TaskSpec) -> float:
    # Baselines that learn pass/fail need a bar; with no floor, the seed
    # article's BanditRouter uses 0.85.
    return task.floor if task.floor is not None else 0.85


class FixedRouter:
    """Always the same model (``always-best`` is the scenario's fallback)."""

    def __init__(self, name: str, model: str) -> None:
        self.name, self.model = name, model

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        return self.model if self.model in pool else pool[-1]

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


class CheapestRouter:
    """Always the cheapest model in the pool for this task's call."""

    name = "always-cheapest"

    def __init__(self, scenario: Scenario) -> None:
        self._cost = _call_cost_fn(scenario)

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        return min(pool, key=lambda m: self._cost(task, m))

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


class ThresholdRouter:
    """The seed article's static threshold router.

    Each call's complexity is its envelope's score when the scenario gives
    one, else drawn uniformly from 0-1 (seeded; the article takes it from a
    classifier), and ``THRESHOLD_RULES`` maps (task group, complexity) to a
    price tier (``tally_core.policy.complexity``, where the same rules route
    as a ``Tally`` policy). It never learns.
    """

    name = "threshold"

    def __init__(self, scenario: Scenario, seed: int = 0) -> None:
        import random

        self._cost = _call_cost_fn(scenario)
        self._rng = random.Random(seed)

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        given = envelope.get("complexity")
        complexity = float(given) if isinstance(given, float) else self._rng.random()
        tier = rule_tier(THRESHOLD_RULES[THRESHOLD_GROUPS.get(task.name, "default")], complexity)
        ranked = sorted(pool, key=lambda m: self._cost(task, m))
        return ranked[tier_position(tier, len(ranked))]

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


class ThompsonRouter:
    """The seed article's ``BanditRouter``: Thompson sampling on success.

    A Beta(1, 1) per (task type, model); success is quality >= the floor (an
    error is a failure); picks the highest draw and ignores cost.
    """

    name = "thompson"

    def __init__(self, seed: int = 0) -> None:
        import numpy as np

        self._rng = np.random.default_rng(seed)
        self._ab: dict[tuple[str, str], list[float]] = {}

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        best, best_draw = pool[0], -1.0
        for m in pool:
            a, b = self._ab.get((task.name, m), (1.0, 1.0))
            draw = float(self._rng.beta(a, b))
            if draw > best_draw:
                best, best_draw = m, draw
        return best

    def observe(
        self,
        task: TaskSpec,
        model: str,
        quality: float | None,
        errored: bool,
        input_tokens: int,
        output_tokens: int,
        latency_ms: float,
        cost_usd: float,
    ) -> None:
        ab = self._ab.setdefault((task.name, model), [1.0, 1.0])
        ok = not errored and quality is not None and quality >= _success_bar(task)
        ab[0 if ok else 1] += 1.0


class EpsilonGreedyRouter:
    """Epsilon-greedy on cost: the cheapest model whose running mean quality
    clears the floor; with probability ``epsilon`` a random model.

    Each model is tried ``min_obs`` times per task type first; when no model's
    mean clears the floor, the one with the best mean. An error counts as
    quality 0.
    """

    name = "epsilon-greedy"

    def __init__(
        self, scenario: Scenario, seed: int = 0, epsilon: float = 0.1, min_obs: int = 3
    ) -> None:
        import random

        self.epsilon, self.min_obs = epsilon, min_obs
        self._cost = _call_cost_fn(scenario)
        self._tol = scenario.parity_tolerance
        self._rng = random.Random(seed)
        self._stats: dict[tuple[str, str], list[float]] = {}

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        if self._rng.random() < self.epsilon:
            return pool[self._rng.randrange(len(pool))]
        means: dict[str, float] = {}
        for m in pool:
            n, total = self._stats.get((task.name, m), (0.0, 0.0))
            if n < self.min_obs:
                return m
            means[m] = total / n
        bar = _bar(task, means, self._tol)
        ok = [m for m in pool if means[m] >= bar]
        if not ok:
            return max(pool, key=lambda m: means[m])
        return min(ok, key=lambda m: self._cost(task, m))

    def observe(
        self,
        task: TaskSpec,
        model: str,
        quality: float | None,
        errored: bool,
        input_tokens: int,
        output_tokens: int,
        latency_ms: float,
        cost_usd: float,
    ) -> None:
        st = self._stats.setdefault((task.name, model), [0.0, 0.0])
        st[0] += 1.0
        st[1] += 0.0 if errored or quality is None else quality


def _bar(task: TaskSpec, truths: Mapping[str, float], tol: float) -> float:
    return task.floor if task.floor is not None else max(truths.values()) - tol


@dataclass
class SimResult:
    router: str
    calls: int
    cost_usd: float
    mean_quality: float
    violations_after_warmup: int
    calls_after_warmup: int
    share: dict[str, float]
    per_task: dict[str, dict[str, Any]]
    phases: dict[str, int] = field(default_factory=dict)
    calibration_calls: dict[str, int] = field(default_factory=dict)
    adaptation_calls: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0
    violations: int = 0  # calls below the floor from each task type's first call
    # Tally only: the post-warm-up violations by the phase of the decision behind them.
    violations_by_phase: dict[str, int] = field(default_factory=dict)
    # Per call: (index, task type, cost, below the floor). Not in to_dict().
    trace: list[tuple[int, str, float, bool]] = field(default_factory=list, repr=False)

    @property
    def violation_rate(self) -> float:
        return self.violations_after_warmup / max(self.calls_after_warmup, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "router": self.router,
            "calls": self.calls,
            "cost_usd": self.cost_usd,
            "mean_quality": self.mean_quality,
            "violation_rate": self.violation_rate,
            "violations_after_warmup": self.violations_after_warmup,
            "calls_after_warmup": self.calls_after_warmup,
            "violations": self.violations,
            "violations_by_phase": self.violations_by_phase,
            "share": self.share,
            "per_task": self.per_task,
            "phases": self.phases,
            "calibration_calls": self.calibration_calls,
            "adaptation_calls": self.adaptation_calls,
            "errors": self.errors,
        }


def simulate(
    scenario: Scenario,
    routers: Sequence[SimRouter],
    *,
    seed: int = 0,
    calls: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, SimResult]:
    """Run every router on the same seeded stream of calls; metrics per router.

    Each router sees only the outcomes of its own choices. The stream of
    tasks, token counts and per-call noise is drawn once and shared, so the
    routers are compared call for call.
    """
    import numpy as np

    n = calls or scenario.calls
    rng = np.random.default_rng(seed)
    names = scenario.model_names()
    catalog = Catalog([ModelSpec(**m) if isinstance(m, dict) else m for m in scenario.models])
    tasks = list(scenario.tasks.values())
    shares = np.array([t.share for t in tasks], dtype=float)
    task_idx = rng.choice(len(tasks), size=n, p=shares / shares.sum())
    noise = rng.random(n)  # per-call pass/fail draw
    znoise = rng.standard_normal(n)  # per-call graded-score noise
    noise2 = rng.random(n)
    tok_jitter = rng.lognormal(0.0, 0.3, size=(n, 2))
    lat_jitter = rng.lognormal(0.0, 0.25, size=n)
    # Complexity draws come from a stream of their own, so a scenario without
    # complexity sees the very stream it saw before they existed.
    levels, scores = _complexity_draws(tasks, task_idx, seed)

    def state_at(i: int) -> tuple[dict[tuple[str | None, str], float], set[str], dict[str, float]]:
        frac = i / n
        overrides: dict[tuple[str | None, str], float] = {}
        joined_later = {e.model for e in scenario.events if e.join and e.at > frac}
        erroring: dict[str, float] = {}
        for e in scenario.events:
            if e.at <= frac:
                if e.quality is not None:
                    overrides[(e.task, e.model)] = e.quality
                if e.error_rate is not None and (e.until is None or frac < e.until):
                    erroring[e.model] = e.error_rate
        return overrides, joined_later, erroring

    def cost_of(model: str, it: int, ot: int) -> float:
        return catalog[model].estimate_cost_usd(it, ot)

    def outcome(
        i: int,
        task: TaskSpec,
        truth: Callable[[TaskSpec, str], float],
        erroring: Mapping[str, float],
        model: str,
    ) -> tuple[float | None, bool, float]:
        """Call ``i`` served by ``model``: (quality or None, errored, latency_ms)."""
        lat = float(scenario.latency_ms.get(model, 1000.0) * lat_jitter[i])
        if noise2[i] < erroring.get(model, 0.0):
            return None, True, lat
        q_true = truth(task, model)
        if task.outcome == "bernoulli":
            return (1.0 if noise[i] < q_true else 0.0), False, lat
        # A graded score around the true mean, with the spread of
        # Beta(q*c, (1-q)*c), clipped to 0-1.
        sd = math.sqrt(q_true * (1 - q_true) / (task.concentration + 1))
        return float(min(max(q_true + sd * znoise[i], 0.0), 1.0)), False, lat

    # Precompute the world's state per call index (events are few).
    marks = sorted(
        {0}
        | {int(e.at * n) for e in scenario.events}
        | {int(e.until * n) for e in scenario.events if e.until is not None}
    )
    states = {m: state_at(m) for m in marks}

    results: dict[str, SimResult] = {}
    for router in routers:
        rec = _Recorder(names, [t.name for t in tasks], scenario.warmup)
        prepare = getattr(router, "prepare", None)
        state = states[0]
        for i in range(n):
            if i in states:
                state = states[i]
            overrides, joined_later, erroring = state
            task = tasks[task_idx[i]]
            pool = [m for m in names if m not in joined_later]

            level = levels[i] if levels is not None else None

            def truth(t: TaskSpec, m: str, _o: Any = overrides, _lv: Any = level) -> float:
                base = t.quality[m]
                if _lv is not None and _lv in t.quality_by_complexity:
                    base = t.quality_by_complexity[_lv].get(m, base)
                return float(_o.get((t.name, m), _o.get((None, m), base)))

            it = max(1, int(task.input_tokens * tok_jitter[i, 0]))
            ot = max(1, int(task.output_tokens * tok_jitter[i, 1]))
            env = {"task_type": task.name, "quality_floor": task.floor, **task.envelope}
            if level is not None and scores is not None:
                env["complexity"] = float(scores[i])
            if isinstance(router, OracleRouter):
                router._truth = truth  # the oracle sees the world as it is now
            if prepare is not None:
                answer = partial(outcome, i, task, truth, erroring)
                prepare(SimCall(i, task, env, pool, it, ot, answer))
            model = router.choose(task, env, pool)
            q_true = truth(task, model)
            bar = _bar(task, {m: truth(task, m) for m in pool}, scenario.parity_tolerance)
            quality, errored, lat = outcome(i, task, truth, erroring, model)
            if errored:
                c = 0.0
                rec.errors += 1
            else:
                c = cost_of(model, it, ot)
            router.observe(task, model, quality, errored, it, ot, lat, c)
            rec.add(i, task.name, model, c, q_true, q_true, bar)
            if progress is not None and i % 1000 == 0:
                progress(i)
        results[router.name] = rec.result(router, scenario)
    return results


def _complexity_draws(
    tasks: Sequence[TaskSpec], task_idx: Any, seed: int
) -> tuple[list[str | None] | None, Any]:
    """Each call's complexity level and score (a score inside the level's
    third, to 2 decimals), or (None, None) when no task has a complexity mix."""
    if not any(t.complexity for t in tasks):
        return None, None
    import numpy as np

    rng = np.random.default_rng([seed, 16])
    pick, within = rng.random(len(task_idx)), rng.random(len(task_idx))
    cum = []
    for t in tasks:
        total = sum(t.complexity.get(lv, 0.0) for lv in _LEVELS)
        acc, edges = 0.0, []
        for lv in _LEVELS:
            acc += t.complexity.get(lv, 0.0) / total if total else 0.0
            edges.append(acc)
        cum.append(edges)
    levels: list[str | None] = []
    scores = np.zeros(len(task_idx))
    for i, ti in enumerate(task_idx):
        if not tasks[ti].complexity:
            levels.append(None)
            continue
        k = next((j for j, e in enumerate(cum[ti]) if pick[i] < e), 2)
        levels.append(_LEVELS[k])
        # Kept off the thirds' edges, so the score's level is the drawn one.
        scores[i] = round((k + 0.01 + 0.98 * within[i]) / 3, 2)
    return levels, scores


class _Recorder:
    """One router's figures, call by call: what ``simulate`` and
    ``tally_core.eval.replay`` both count, so the two report the same metrics.

    ``quality`` is what the call is scored at (the simulator: the chosen
    model's true mean); ``truth`` is what a floor violation is judged on
    (``truth < bar``, counted once the task type has had ``warmup`` calls).
    """

    def __init__(self, models: Sequence[str], tasks: Sequence[str], warmup: int) -> None:
        self.models, self.warmup = list(models), warmup
        self.cost = 0.0
        self.qsum = 0.0
        self.viol = 0
        self.viol_all = 0
        self.after = 0
        self.errors = 0
        self.n = 0
        self.counts: dict[str, int] = {m: 0 for m in self.models}
        self.per_task: dict[str, dict[str, Any]] = {
            t: {"calls": 0, "cost_usd": 0.0, "quality": 0.0, "violations": 0, "models": {}}
            for t in tasks
        }
        self.seen: dict[str, int] = {t: 0 for t in tasks}
        self.log: list[tuple[int, str, str]] = []
        self.trace: list[tuple[int, str, float, bool]] = []
        self.counted: list[bool] = []  # per call: a violation after the warm-up

    def add(
        self, i: int, task: str, model: str, cost: float, quality: float, truth: float, bar: float
    ) -> None:
        self.n += 1
        self.seen[task] += 1
        pt = self.per_task[task]
        pt["calls"] += 1
        pt["cost_usd"] += cost
        pt["quality"] += quality
        pt["models"][model] = pt["models"].get(model, 0) + 1
        self.cost += cost
        self.qsum += quality
        self.counts[model] = self.counts.get(model, 0) + 1
        below = truth < bar - 1e-12
        self.viol_all += int(below)
        counted = below and self.seen[task] > self.warmup
        if self.seen[task] > self.warmup:
            self.after += 1
            if counted:
                self.viol += 1
                pt["violations"] += 1
        self.log.append((i, task, model))
        self.trace.append((i, task, cost, below))
        self.counted.append(counted)

    def result(self, router: SimRouter, scenario: Scenario) -> SimResult:
        n = self.n
        for pt in self.per_task.values():
            pt["quality"] = pt["quality"] / max(pt["calls"], 1)
        res = SimResult(
            router=router.name,
            calls=n,
            cost_usd=self.cost,
            mean_quality=self.qsum / n,
            violations_after_warmup=self.viol,
            calls_after_warmup=self.after,
            share={m: self.counts.get(m, 0) / n for m in self.models},
            per_task=self.per_task,
            errors=self.errors,
            violations=self.viol_all,
            trace=self.trace,
        )
        if isinstance(router, TallyRouter):
            res.phases = {
                p: router.phases.count(p) for p in ("calibrate", "explore", "exploit", "fallback")
            }
            res.calibration_calls = _calibration_calls(self.log, router.phases)
            for phase, counted in zip(router.phases, self.counted, strict=False):
                if counted:
                    res.violations_by_phase[phase] = res.violations_by_phase.get(phase, 0) + 1
        res.adaptation_calls = _adaptation(scenario, self.log, n)
        return res


def _calibration_calls(log: list[tuple[int, str, str]], phases: list[str]) -> dict[str, int]:
    """Per task type: its calls up to and including the last calibration call of
    the opening stretch (before the first 20 calls in a row out of calibration)."""
    out: dict[str, int] = {}
    run: dict[str, int] = {}
    k: dict[str, int] = {}
    for (_, task, _), phase in zip(log, phases, strict=False):
        k[task] = k.get(task, 0) + 1
        if task in out and out[task] >= 0 and run.get(task, 0) >= 20:
            continue
        if phase == "calibrate":
            out[task] = k[task]
            run[task] = 0
        else:
            out.setdefault(task, 0)
            run[task] = run.get(task, 0) + 1
    return out


def _adaptation(
    scenario: Scenario, log: list[tuple[int, str, str]], n: int
) -> list[dict[str, Any]]:
    """For each quality event: calls of that task type after it until the router
    stopped relying on a degraded model, or first used an improved one."""
    out = []
    for e in scenario.events:
        if e.quality is None or e.task is None:
            continue
        t0 = int(e.at * n)
        before = scenario.tasks[e.task].quality[e.model]
        uses: list[bool] = [
            model == e.model for i, task, model in log if i >= t0 and task == e.task
        ]
        k = len(uses)
        first_use = next((j + 1 for j, u in enumerate(uses) if u), None)
        # Degraded: the calls until the model stops being a regular choice,
        # i.e. from there on no window of 50 calls gives it more than 10%
        # (what is left is bounded exploration).
        last_use = 0
        for j in range(k):
            window = uses[j : j + 50]
            if sum(window) > 5:
                last_use = j + max(x for x, u in enumerate(window) if u) + 1
        degraded = e.quality < before
        out.append(
            {
                "task": e.task,
                "model": e.model,
                "from": before,
                "to": e.quality,
                "kind": "degrade" if degraded else "improve",
                "calls_until_adapted": last_use if degraded else first_use,
                "task_calls_after": k,
            }
        )
    return out


#: Routers ``run_comparison`` runs by default, in table order.
ROUTER_NAMES = (
    "tally",
    "oracle",
    "always-best",
    "always-cheapest",
    "threshold",
    "thompson",
    "epsilon-greedy",
)

#: Builds a router that is not in this module (LiteLLM's, say) for a scenario.
RouterFactory = Callable[[Scenario, int], SimRouter]


def baseline_routers(
    scenario: Scenario,
    seed: int = 0,
    names: Sequence[str] = ROUTER_NAMES,
    tally_kwargs: Mapping[str, Any] | None = None,
    extra: Mapping[str, RouterFactory] | None = None,
) -> list[SimRouter]:
    """The routers named (see ``ROUTER_NAMES``, plus any in ``extra``), built
    for ``scenario``. ``extra`` maps more names to factories, so routers that
    need another library (``tally_litellm.baseline``) join without this module
    importing it."""
    out: list[SimRouter] = []
    for name in names:
        if name == "tally":
            out.append(TallyRouter(scenario, seed=seed, **dict(tally_kwargs or {})))
        elif name == "oracle":
            out.append(OracleRouter.for_scenario(scenario))
        elif name == "always-best":
            out.append(FixedRouter("always-best", scenario.fallback))
        elif name == "always-cheapest":
            out.append(CheapestRouter(scenario))
        elif name == "threshold":
            out.append(ThresholdRouter(scenario, seed=seed))
        elif name == "thompson":
            out.append(ThompsonRouter(seed=seed))
        elif name == "epsilon-greedy":
            out.append(EpsilonGreedyRouter(scenario, seed=seed))
        elif extra and name in extra:
            out.append(extra[name](scenario, seed))
        else:
            known = [*ROUTER_NAMES, *(extra or {})]
            raise InvalidFieldError("routers", f"unknown router {name!r}; known: {known}")
    return out


def run_comparison(
    scenario: Scenario | str | Path,
    seed: int = 1,
    calls: int | None = None,
    routers: Sequence[str] = ROUTER_NAMES,
    tally_kwargs: Mapping[str, Any] | None = None,
    extra: Mapping[str, RouterFactory] | None = None,
) -> dict[str, Any]:
    """Run the routers on one seeded stream; every figure, per router.

    Per router: ``cost_usd``, ``cost_vs_best`` (cost / always-best's),
    ``oracle_savings_share`` ((best - cost) / (best - oracle)), ``mean_quality``
    (true mean of the chosen models), ``quality_vs_best``, ``violation_rate``
    (after each task type's first ``warmup`` calls; ``violations`` counts them
    from the first call), regret against the oracle, ``share`` of traffic per
    model, ``adaptation_calls`` per quality event, and for Tally
    ``calibration_calls`` per task type, ``phases`` and ``violations_by_phase``
    (the post-warm-up violations by the phase of the decision behind them).
    ``always-best`` and ``oracle`` always run (the ratios need them).

    >>> r = run_comparison("seed-landscape", seed=1, calls=300,
    ...                    routers=("always-cheapest",))
    >>> r["routers"]["oracle"]["oracle_savings_share"]
    1.0
    """
    import time

    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    names = list(routers)
    for must in ("always-best", "oracle"):
        if must not in names:
            names.append(must)
    built = baseline_routers(sc, seed=seed, names=names, tally_kwargs=tally_kwargs, extra=extra)
    results: dict[str, SimResult] = {}
    wall: dict[str, float] = {}
    for r in built:
        t0 = time.perf_counter()
        results.update(simulate(sc, [r], seed=seed, calls=calls))
        wall[r.name] = time.perf_counter() - t0
        close = getattr(r, "close", None)
        if close is not None:
            close()
    n = results["always-best"].calls
    shifts = [(e.task, e.model, int(e.at * n)) for e in sc.events if e.task and e.quality]
    return {
        "scenario": sc.name,
        "seed": seed,
        "calls": n,
        "routers": _summarize(results, names, wall, shifts),
    }


def _recovery(
    res: SimResult,
    oracle: SimResult,
    task: str,
    t0: int,
    window: int = 100,
    cost_tol: float = 0.05,
    violation_tol: float = 0.01,
) -> int | None:
    """Calls of ``task`` after call ``t0`` until ``res`` is back near the
    oracle: from there on, every window of ``window`` calls of the task costs
    at most ``cost_tol`` more than the oracle's same calls and sends at most
    ``violation_tol`` more of them below the floor. None: never within the run."""
    mine = [(c, v) for i, t, c, v in res.trace if t == task and i >= t0]
    ref = [(c, v) for i, t, c, v in oracle.trace if t == task and i >= t0]
    k = min(len(mine), len(ref))
    if k < window:
        return None
    acc = list(
        itertools.accumulate(
            (
                (c - r * (1 + cost_tol), int(v) - int(w))
                for (c, v), (r, w) in zip(mine[:k], ref[:k], strict=True)
            ),
            lambda a, b: (a[0] + b[0], a[1] + b[1]),
            initial=(0.0, 0),
        )
    )
    ok = [
        acc[j + window][0] - acc[j][0] <= 1e-12
        and acc[j + window][1] - acc[j][1] <= violation_tol * window
        for j in range(k - window + 1)
    ]
    last_bad = max((j for j, good in enumerate(ok) if not good), default=-1)
    return None if last_bad == len(ok) - 1 else last_bad + 1


def _summarize(
    results: Mapping[str, SimResult],
    names: Sequence[str],
    wall: Mapping[str, float],
    shifts: Sequence[tuple[str, str, int]] = (),
) -> dict[str, Any]:
    """Each router's figures as ``run_comparison`` reports them, in ``names``
    order; ``results`` must hold ``always-best`` and ``oracle``. ``shifts``:
    (task, model, call index) of quality changes, for ``drift_recovery``."""
    best, orc = results["always-best"], results["oracle"]
    gap = best.cost_usd - orc.cost_usd
    out: dict[str, Any] = {}
    for name, res in results.items():
        d = res.to_dict()
        d.pop("per_task")
        d.pop("router")
        d.update(
            cost_vs_best=res.cost_usd / best.cost_usd if best.cost_usd else float("nan"),
            oracle_savings_share=(best.cost_usd - res.cost_usd) / gap if gap > 0 else float("nan"),
            quality_vs_best=res.mean_quality / best.mean_quality if best.mean_quality else 0.0,
            cost_regret_usd=res.cost_usd - orc.cost_usd,
            violation_regret=res.violation_rate - orc.violation_rate,
            per_task={
                t: {
                    "calls": pt["calls"],
                    "cost_usd": pt["cost_usd"],
                    "quality": pt["quality"],
                    "violations": pt["violations"],
                    "models": dict(pt["models"]),
                }
                for t, pt in res.per_task.items()
            },
            seconds=wall[name],
            drift_recovery=[
                {
                    "task": task,
                    "model": model,
                    "calls_until_recovered": _recovery(res, orc, task, t0),
                }
                for task, model, t0 in shifts
            ],
        )
        if name != "tally":
            d.pop("phases")
            d.pop("calibration_calls")
            d.pop("violations_by_phase")
        out[name] = d
    return {n: out[n] for n in names if n in out}
