"""Shared setup for the LiteLLM adapter tests: real routers, mocked providers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import litellm  # tests/conftest.py has set LITELLM_LOCAL_MODEL_COST_MAP
import pytest

from tally_core import Tally
from tally_litellm import TallyStrategy

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
MSGS = [{"role": "user", "content": "What is the capital of France?"}]


_CALLBACK_LISTS = ("callbacks", "success_callback", "failure_callback", "input_callback",
                   "_async_success_callback", "_async_failure_callback", "service_callback")


@pytest.fixture(autouse=True)
def litellm_callbacks_restored() -> Iterator[None]:
    """Put LiteLLM's global callback lists back after each test (import it to use it).

    Every ``litellm.Router`` adds itself to them and stays there until
    ``router.discard()``; past 100 entries LiteLLM refuses new callbacks, and
    a later test's strategy would never hear of its calls.
    """
    saved = {name: list(getattr(litellm, name)) for name in _CALLBACK_LISTS
             if isinstance(getattr(litellm, name, None), list)}
    yield
    for name, items in saved.items():
        current = getattr(litellm, name)
        if isinstance(current, list):
            current[:] = items


def dep(
    model: str, did: str, group: str = "auto", reply: Any = None, **params: Any
) -> dict[str, Any]:
    """A deployment whose mock reply names it, so a test can see who served."""
    return {
        "model_name": group,
        "litellm_params": {
            "model": model,
            "api_key": "sk-test",
            "mock_response": reply if reply is not None else f"from {did}",
            **params,
        },
        "model_info": {"id": did},
    }


def pool_deployments(group: str = "auto") -> list[dict[str, Any]]:
    return [
        dep("gpt-4o-mini", "mini", group),
        dep("claude-haiku-4-5", "haiku", group),
        dep("openai/gpt-4o", "4o", group),
    ]


def make_router(model_list: list[dict[str, Any]], **kwargs: Any) -> litellm.Router:
    kwargs.setdefault("num_retries", 0)
    return litellm.Router(model_list=model_list, **kwargs)


@contextmanager
def installed(
    model_list: list[dict[str, Any]] | None = None,
    *,
    pool: list[Any] | None = None,
    router_kwargs: dict[str, Any] | None = None,
    tally_kwargs: dict[str, Any] | None = None,
    **strategy_kwargs: Any,
) -> Iterator[tuple[litellm.Router, Tally, TallyStrategy]]:
    """A router with a TallyStrategy installed; uninstalled (callbacks removed) after."""
    router = make_router(model_list or pool_deployments(), **(router_kwargs or {}))
    tk = {"fallback": "gpt-4o", "store": ":memory:", "seed": 7, **(tally_kwargs or {})}
    tally = Tally(pool or POOL, **tk)
    strategy = TallyStrategy(tally, **strategy_kwargs).install(router)
    try:
        yield router, tally, strategy
    finally:
        strategy.close()
        tally.close()


def served_id(response: Any) -> str:
    return str(response._hidden_params["model_id"])


def rows(tally: Tally) -> list[dict[str, Any]]:
    return list(tally.ledger.rows())


def stat(tally: Tally, task_type: str, model: str) -> dict[str, Any]:
    return next(s for s in tally.stats(task_type) if s["model"] == model)


def train(tally: Tally, task_type: str, quality: dict[str, float], n: int = 30) -> None:
    """Tell Tally how good each model is for a task type, as if n calls each had run."""
    for model, q in quality.items():
        for _ in range(n):
            tally.telemetry(model=model, task_type=task_type, quality=q,
                            input_tokens=10, output_tokens=20)
    tally.flush()


def expected_cost(model: str, input_tokens: int, output_tokens: int) -> float:
    cin, cout = litellm.cost_per_token(
        model=model, prompt_tokens=input_tokens, completion_tokens=output_tokens
    )
    return float(cin + cout)


def cooling_ids(router: Any, ids: list[str]) -> set[str]:
    """Which of ``ids`` LiteLLM has in cooldown, through the router's own
    cooldown store (``health().cooldowns`` from 1.109, ``cooldown_cache``
    before): the module function that takes a Router is deprecated on 1.110."""
    health = getattr(router, "health", None)
    cache = health().cooldowns if callable(health) else router.cooldown_cache
    active = cache.get_active_cooldowns(model_ids=ids, parent_otel_span=None)
    return {item[0] for item in active or () if isinstance(item, tuple) and item}
