"""A workload simulator: a model pool, task types with a traffic mix and a true
quality per (task type, model), and routers compared on the same seeded stream.

Scenarios are JSON files (``tally_core/scenarios/*.json``, or any path):

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

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from tally_core.catalog import Catalog, ModelSpec
from tally_core.errors import InvalidFieldError

__all__ = [
    "OracleRouter",
    "Scenario",
    "SimResult",
    "SimRouter",
    "TallyRouter",
    "load_scenario",
    "scenario_names",
    "simulate",
]


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
        return sc

    def model_names(self) -> list[str]:
        return [m if isinstance(m, str) else m["name"] for m in self.models]


def scenario_names() -> list[str]:
    """Scenarios shipped with Tally."""
    folder = resources.files("tally_core").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (``seed-landscape``) or a JSON file by path."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        text = p.read_text(encoding="utf-8")
    else:
        res = resources.files("tally_core").joinpath("scenarios", f"{name_or_path}.json")
        if not res.is_file():
            raise InvalidFieldError(
                "scenario", f"no scenario {name_or_path!r}; shipped: {', '.join(scenario_names())}"
            )
        text = res.read_text(encoding="utf-8")
    return Scenario.from_dict(json.loads(text))


class SimRouter(Protocol):
    """What the simulator drives: choose a model, then learn the outcome."""

    name: str

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str: ...

    def observe(
        self, task: TaskSpec, model: str, quality: float | None, errored: bool,
        input_tokens: int, output_tokens: int, latency_ms: float, cost_usd: float,
    ) -> None: ...


class TallyRouter:
    """Tally itself, in memory, applying telemetry at once (reproducible)."""

    def __init__(self, scenario: Scenario, seed: int, **tally_kwargs: Any) -> None:
        from tally_core.router import Tally

        self.name = "tally"
        joined = {e.model for e in scenario.events if e.join}
        pool = [m for m in scenario.models if (m if isinstance(m, str) else m["name"]) not in joined]
        self._all = {(m if isinstance(m, str) else m["name"]): m for m in scenario.models}
        self.tally = Tally(
            [ModelSpec(**m) if isinstance(m, dict) else m for m in pool],
            fallback=scenario.fallback,
            store=":memory:",
            seed=seed,
            background=False,
            **tally_kwargs,
        )
        self.phases: list[str] = []
        self._last: Any = None

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        for name in pool:
            if name not in self.tally.catalog:
                spec = self._all[name]
                self.tally.add_model(ModelSpec(**spec) if isinstance(spec, dict) else spec)
        d = self.tally.route(envelope)
        self._last = d
        self.phases.append(d.phase)
        return d.model

    def observe(
        self, task: TaskSpec, model: str, quality: float | None, errored: bool,
        input_tokens: int, output_tokens: int, latency_ms: float, cost_usd: float,
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

    def close(self) -> None:
        self.tally.close()


class OracleRouter:
    """Knows the true qualities: the cheapest model meeting the floor, per call."""

    name = "oracle"

    def __init__(self, truth: Callable[[TaskSpec, str], float], costs: Callable[[str], float],
                 tolerance: float) -> None:
        self._truth, self._costs, self._tol = truth, costs, tolerance

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        bar = _bar(task, {m: self._truth(task, m) for m in pool}, self._tol)
        ok = [m for m in pool if self._truth(task, m) >= bar]
        if not ok:
            return max(pool, key=lambda m: self._truth(task, m))
        return min(ok, key=self._costs)

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


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

    # Precompute the world's state per call index (events are few).
    marks = sorted({0} | {int(e.at * n) for e in scenario.events}
                   | {int(e.until * n) for e in scenario.events if e.until is not None})
    states = {m: state_at(m) for m in marks}

    results: dict[str, SimResult] = {}
    for router in routers:
        cost = 0.0
        qsum = 0.0
        viol = 0
        after = 0
        errors = 0
        counts: dict[str, int] = {m: 0 for m in names}
        per_task: dict[str, dict[str, Any]] = {
            t.name: {"calls": 0, "cost_usd": 0.0, "quality": 0.0, "violations": 0,
                     "models": {}} for t in tasks
        }
        seen: dict[str, int] = {t.name: 0 for t in tasks}
        chosen_log: list[tuple[int, str, str]] = []
        state = states[0]
        for i in range(n):
            if i in states:
                state = states[i]
            overrides, joined_later, erroring = state
            task = tasks[task_idx[i]]
            pool = [m for m in names if m not in joined_later]

            def truth(t: TaskSpec, m: str, _o: Any = overrides) -> float:
                return float(_o.get((t.name, m), _o.get((None, m), t.quality[m])))

            it = max(1, int(task.input_tokens * tok_jitter[i, 0]))
            ot = max(1, int(task.output_tokens * tok_jitter[i, 1]))
            env = {"task_type": task.name, "quality_floor": task.floor, **task.envelope}
            if isinstance(router, OracleRouter):
                router._truth = truth  # the oracle sees the world as it is now
            model = router.choose(task, env, pool)
            q_true = truth(task, model)
            bar = _bar(task, {m: truth(task, m) for m in pool}, scenario.parity_tolerance)
            lat = scenario.latency_ms.get(model, 1000.0) * lat_jitter[i]
            errored = noise2[i] < erroring.get(model, 0.0)
            if errored:
                quality: float | None = None
                c = 0.0
                errors += 1
            else:
                if task.outcome == "bernoulli":
                    quality = 1.0 if noise[i] < q_true else 0.0
                else:
                    # A graded score around the true mean, with the spread of
                    # Beta(q*c, (1-q)*c), clipped to 0-1.
                    sd = math.sqrt(q_true * (1 - q_true) / (task.concentration + 1))
                    quality = min(max(q_true + sd * znoise[i], 0.0), 1.0)
                c = cost_of(model, it, ot)
            router.observe(task, model, quality, errored, it, ot, lat, c)
            seen[task.name] += 1
            pt = per_task[task.name]
            pt["calls"] += 1
            pt["cost_usd"] += c
            pt["quality"] += q_true
            pt["models"][model] = pt["models"].get(model, 0) + 1
            cost += c
            qsum += q_true
            counts[model] = counts.get(model, 0) + 1
            if seen[task.name] > scenario.warmup:
                after += 1
                if q_true < bar - 1e-12:
                    viol += 1
                    pt["violations"] += 1
            chosen_log.append((i, task.name, model))
            if progress is not None and i % 1000 == 0:
                progress(i)
        for pt in per_task.values():
            pt["quality"] = pt["quality"] / max(pt["calls"], 1)
        res = SimResult(
            router=router.name,
            calls=n,
            cost_usd=cost,
            mean_quality=qsum / n,
            violations_after_warmup=viol,
            calls_after_warmup=after,
            share={m: counts.get(m, 0) / n for m in names},
            per_task=per_task,
            errors=errors,
        )
        if isinstance(router, TallyRouter):
            res.phases = {p: router.phases.count(p) for p in
                          ("calibrate", "explore", "exploit", "fallback")}
            res.calibration_calls = _calibration_calls(chosen_log, router.phases)
        res.adaptation_calls = _adaptation(scenario, chosen_log, n)
        results[router.name] = res
    return results


def _calibration_calls(log: list[tuple[int, str, str]], phases: list[str]) -> dict[str, int]:
    """Per task type: its calls up to and including the last calibration call of
    the opening stretch (before the first 20 calls in a row out of calibration)."""
    out: dict[str, int] = {}
    run: dict[str, int] = {}
    k: dict[str, int] = {}
    for (_, task, _), phase in zip(log, phases):
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


def _adaptation(scenario: Scenario, log: list[tuple[int, str, str]], n: int) -> list[dict[str, Any]]:
    """For each quality event: calls of that task type after it until the router
    stopped using a degraded model (last use), or first used an improved one."""
    out = []
    for e in scenario.events:
        if e.quality is None or e.task is None:
            continue
        t0 = int(e.at * n)
        before = scenario.tasks[e.task].quality[e.model]
        k = 0
        last_use = 0
        first_use = None
        for i, task, model in log:
            if i < t0 or task != e.task:
                continue
            k += 1
            if model == e.model:
                last_use = k
                if first_use is None:
                    first_use = k
        degraded = e.quality < before
        out.append({
            "task": e.task, "model": e.model, "from": before, "to": e.quality,
            "kind": "degrade" if degraded else "improve",
            "calls_until_adapted": last_use if degraded else first_use,
            "task_calls_after": k,
        })
    return out
