"""``tally demo`` on the product path: a simulated workload through a real ``litellm.Router``.

Every call of a simulator scenario (``tally_core.eval.sim``) is a
``router.completion`` on a router whose deployments are the scenario's models
in one group (``"auto"``), each answering with ``mock_response``, so nothing
leaves the machine. ``TallyStrategy`` is installed on the router: Tally picks
each deployment, and its ``TallyCallback`` reports each call (tokens, cost,
success or the error class) with the quality its ``scorer`` gives.

The simulator plays the providers. Before each call it hands the driver the
call as the world will answer it (``tally_core.eval.sim.SimCall``); the driver puts
the per-model answers in the request metadata, where the scorer reads the
served model's quality, and the mock response carries the call's token counts
(``usage``), so LiteLLM prices the call as the scenario does. A provider
outage in the scenario fails the call with LiteLLM's mock
``InternalServerError``. (Quality goes through the scorer rather than
``tally.feedback``: it then arrives with the call's own telemetry event, where
late feedback would race that event on LiteLLM's logging threads.) The
figures (cost against always the best model, true quality, calls below the
floor) are ``simulate``'s own.

Latency is what LiteLLM measures for the mock call (a few ms), not the
scenario's: the demo does not sleep.

Import this module with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` already set
(``tally demo`` does) so LiteLLM reads its bundled price map and never the
network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litellm
from litellm.exceptions import InternalServerError
from litellm.router import Router

from tally_core import Tally
from tally_core.catalog import ModelSpec
from tally_core.eval.sim import (
    FixedRouter,
    Scenario,
    SimCall,
    SimResult,
    TaskSpec,
    load_scenario,
    simulate,
)
from tally_litellm.strategy import DECISION_KEY, TallyStrategy, get_decision

__all__ = [
    "DEMO_GROUP",
    "DemoResult",
    "RouterDriver",
    "build_router",
    "initial_pool",
    "WORLD_KEY",
    "quiet_litellm",
    "run_demo",
]

#: The model group every demo call asks for.
DEMO_GROUP = "auto"
#: Request-metadata key for the simulated providers' answers to one call.
WORLD_KEY = "tally_demo_world"
#: What a deployment answers when the scenario says its provider is down.
_OUTAGE = "litellm.InternalServerError"
_QUIET = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm")


def _spec(model: str | Mapping[str, Any]) -> str | ModelSpec:
    return model if isinstance(model, str) else ModelSpec(**model)


def _name(model: str | Mapping[str, Any]) -> str:
    return model if isinstance(model, str) else str(model["name"])


def initial_pool(scenario: Scenario) -> list[str | ModelSpec]:
    """The scenario's models, less those that join mid-run (the driver adds them)."""
    joined = {e.model for e in scenario.events if e.join}
    return [_spec(m) for m in scenario.models if _name(m) not in joined]


def build_router(scenario: Scenario, group: str = DEMO_GROUP) -> Router:
    """A ``litellm.Router`` with one mock deployment per scenario model, all in ``group``.

    Cooldowns are off: the scenario's outages play out in simulated calls,
    and LiteLLM's cooldown runs on the wall clock, where the whole demo takes
    seconds. No retries and no fallbacks, so each call is served (or failed)
    by the one model Tally picked, as the simulator counts it.
    """
    model_list: list[dict[str, Any]] = []
    for m in scenario.models:
        name = _name(m)
        params: dict[str, Any] = {"model": name, "api_key": "sk-demo", "mock_response": "ok"}
        if not isinstance(m, str):
            # A model the price map does not know: LiteLLM prices it from these.
            spec = ModelSpec(**m)
            params["model"] = f"openai/{name}"
            params["input_cost_per_token"] = (spec.input_cost_per_mtok or 0.0) / 1e6
            params["output_cost_per_token"] = (spec.output_cost_per_mtok or 0.0) / 1e6
        model_list.append(
            {
                "model_name": group,
                "litellm_params": params,
                "model_info": {"id": f"demo-{name}", "tally_model": name},
            }
        )
    router: Router = Router(
        model_list=model_list, num_retries=0, disable_cooldowns=True, set_verbose=False
    )
    return router


class _ProviderStrategy(TallyStrategy):
    """``TallyStrategy`` plus the simulated providers' outages.

    After Tally has picked the deployment, a call the scenario fails for that
    model gets LiteLLM's mock ``InternalServerError`` as its mock response,
    so LiteLLM raises and logs the failure as a provider's would be.
    """

    def get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        dep = super().get_available_deployment(
            model, messages, input, specific_deployment, request_kwargs
        )
        if request_kwargs is not None:
            world = (request_kwargs.get("metadata") or {}).get(WORLD_KEY)
            served = (dep.get("model_info") or {}).get("tally_model")  # set by build_router
            if isinstance(world, Mapping) and served in world and world[served][1]:
                request_kwargs["mock_response"] = _OUTAGE
        return dep


def _score(request: dict[str, Any], response: Any) -> float | None:
    """The scenario's quality for the model that served this call."""
    world = request["metadata"].get(WORLD_KEY)
    answer = world.get(request["model"]) if isinstance(world, Mapping) else None
    return None if answer is None else answer[0]


def _reply(call: SimCall) -> dict[str, Any]:
    # A dict mock response becomes the ModelResponse as is: its usage is
    # what LiteLLM logs and prices.
    it, ot = call.input_tokens, call.output_tokens
    return {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "(simulated answer)"},
            }
        ],
        "usage": {"prompt_tokens": it, "completion_tokens": ot, "total_tokens": it + ot},
    }


class RouterDriver:
    """A ``tally_core.eval.sim.SimRouter`` that makes each call through a real ``litellm.Router``.

    Parameters
    ----------
    tally
        The ``Tally`` to install (any store). The driver adds the models a
        scenario event makes join the pool.
    scenario
        Whose models the router deploys.
    flush_every
        Wait for LiteLLM's logging threads and Tally's worker every this many
        calls: simulated traffic comes far faster than real traffic, and each
        route should see the outcomes of calls made well before it.
    on_call
        Called with the number of calls made so far, after each call.
    """

    name = "tally"

    def __init__(
        self,
        tally: Tally,
        scenario: Scenario,
        *,
        group: str = DEMO_GROUP,
        flush_every: int = 25,
        on_call: Callable[[int], None] | None = None,
        org: str = "default",
    ) -> None:
        self.tally = tally
        self.org = org
        self.group = group
        self.flush_every = flush_every
        self.on_call = on_call
        self.router = build_router(scenario, group)
        self.strategy = _ProviderStrategy(tally, scorer=_score).install(self.router)
        self.calls = 0
        self.failed = 0
        self.phases: list[str] = []
        self._specs = {_name(m): _spec(m) for m in scenario.models}
        self._call: SimCall | None = None

    def prepare(self, call: SimCall) -> None:
        self._call = call

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        call = self._call
        if call is None:
            raise RuntimeError("RouterDriver needs simulate(), which calls prepare() first")
        self._call = None
        for name in pool:
            if name not in self.tally.catalog:
                self.tally.add_model(self._specs[name])
        metadata: dict[str, Any] = {
            "tally": {**envelope, "org": self.org},
            WORLD_KEY: {m: call.outcome(m) for m in pool},
        }
        messages = [{"role": "user", "content": f"(simulated {task.name} call)"}]
        try:
            response = self.router.completion(
                model=self.group, messages=messages, mock_response=_reply(call), metadata=metadata
            )
            info = get_decision(response)
        except InternalServerError:
            self.failed += 1
            info = metadata.get(DECISION_KEY)  # the strategy leaves it there, also on failure
        if not isinstance(info, Mapping) or not info.get("model"):
            raise RuntimeError(f"TallyStrategy did not route call {call.index}: {info!r}")
        self.phases.append(str(info.get("phase")))
        return str(info["model"])

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
        # Tally already has this outcome from the callback; only pace the run.
        self.calls += 1
        if self.calls % self.flush_every == 0:
            self.strategy.flush(10.0)
        if self.on_call is not None:
            self.on_call(self.calls)

    def close(self) -> None:
        """Wait for the last calls' telemetry and take the strategy off the router."""
        self.strategy.flush(30.0)
        self.strategy.uninstall()


@dataclass
class DemoResult:
    """What ``run_demo`` measured: Tally through the router against always-best."""

    scenario: str
    fallback: str
    baseline: SimResult  # always the scenario's fallback (its best model)
    routed: SimResult  # Tally, through the router
    seconds: float
    failed_calls: int = 0
    adapter_errors: dict[str, int] = field(default_factory=dict)

    @property
    def saved_usd(self) -> float:
        return self.baseline.cost_usd - self.routed.cost_usd

    @property
    def saved_share(self) -> float:
        base = self.baseline.cost_usd
        return self.saved_usd / base if base else 0.0


@contextmanager
def quiet_litellm() -> Iterator[None]:
    """Keep LiteLLM's own logging and help banners out of the demo's output."""
    loggers = [logging.getLogger(n) for n in _QUIET]
    levels = [lg.level for lg in loggers]
    banner = litellm.suppress_debug_info
    litellm.suppress_debug_info = True
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        litellm.suppress_debug_info = banner
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run_demo(
    scenario: Scenario | str | Path = "seed-landscape",
    tally: Tally | None = None,
    *,
    store: str | Path = ":memory:",
    calls: int | None = None,
    seed: int = 1,
    on_call: Callable[[int], None] | None = None,
    flush_every: int = 25,
    org: str = "default",
) -> DemoResult:
    """Run ``scenario`` through a ``litellm.Router`` with Tally installed.

    ``tally`` is the ``Tally`` to install, left open with what it learned (its
    pool should be ``initial_pool(scenario)`` and its fallback the
    scenario's); without one, a ``Tally`` on ``store`` is built for the run
    and closed after it. Always-best runs on the same seeded stream for the
    comparison. The strategy is uninstalled afterwards. Every call carries
    ``org``, so the demo learns apart from a real workload on the same store.

    >>> r = run_demo("seed-landscape", calls=200, seed=1)
    >>> r.routed.calls, r.saved_usd > 0
    (200, True)
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    own = tally is None
    if tally is None:
        tally = Tally(initial_pool(sc), fallback=sc.fallback, store=store, seed=seed)
    t0 = time.perf_counter()
    try:
        with quiet_litellm():
            driver = RouterDriver(tally, sc, flush_every=flush_every, on_call=on_call, org=org)
            try:
                res = simulate(
                    sc, [FixedRouter("always-best", sc.fallback), driver], seed=seed, calls=calls
                )
            finally:
                driver.close()
    finally:
        if own:
            tally.close()
    routed = res[driver.name]
    routed.phases = {
        p: driver.phases.count(p) for p in ("calibrate", "explore", "exploit", "fallback")
    }
    return DemoResult(
        scenario=sc.name,
        fallback=sc.fallback,
        baseline=res["always-best"],
        routed=routed,
        seconds=time.perf_counter() - t0,
        failed_calls=driver.failed,
        adapter_errors=driver.strategy.errors,
    )
