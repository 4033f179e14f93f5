"""Tally in a litellm.Router, offline: route, grade, learn, and report.

Three deployments answer with canned replies (LiteLLM's ``mock_response``: no
API keys, no network). gpt-4o-mini truncates its JSON; claude-haiku-4-5 and
gpt-4o return it whole. A scorer grades each answer (JSON answers must parse),
and the router learns, per task type, the cheapest model that is good enough:
gpt-4o-mini for quick questions, claude-haiku-4-5 for extraction to JSON.

Run:  python examples/litellm_router.py
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline price map

import json  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import litellm  # noqa: E402

from tally_litellm import TallyStrategy, get_decision  # noqa: E402

BROKEN_JSON = '{"name": "Ada Lovelace", "born": 18'
GOOD_JSON = '{"name": "Ada Lovelace", "born": 1815}'


def deployment(model: str, reply: str) -> dict[str, Any]:
    return {"model_name": "auto",
            "litellm_params": {"model": model, "api_key": "sk-offline", "mock_response": reply}}


def grade(request: dict[str, Any], response: Any) -> float:
    """The scorer: JSON answers must parse; anything else that is not empty passes."""
    text = response.choices[0].message.content or ""
    if (request["optional_params"].get("response_format") or {}).get("type") == "json_object":
        try:
            json.loads(text)
        except ValueError:
            return 0.0
        return 1.0
    return 0.9 if text.strip() else 0.0


def main() -> None:
    router = litellm.Router(
        model_list=[
            deployment("gpt-4o-mini", BROKEN_JSON),
            deployment("anthropic/claude-haiku-4-5", GOOD_JSON),
            deployment("openai/gpt-4o", GOOD_JSON),
        ],
        num_retries=0,
    )
    # The pool comes from the router's deployments; state stays in memory here
    # (leave store= out to keep what was learned in ~/.tally).
    strategy = TallyStrategy.from_router(
        router, fallback="gpt-4o", store=":memory:", seed=0, scorer=grade
    )
    tally = strategy.tally
    print("pool:", tally.catalog.names, "| fallback:", tally.fallback)

    calls = {
        "qa-simple": {},
        "extraction": {"response_format": {"type": "json_object"}},
    }
    picks: dict[str, list[str]] = {task: [] for task in calls}
    for i in range(30):
        for task, extra in calls.items():
            r = router.completion(
                model="auto",
                messages=[{"role": "user", "content": "Who wrote the first program, and when "
                                                      "was she born?"}],
                metadata={"tally": {"task_type": task, "quality_floor": 0.8}},
                **extra,
            )
            d = get_decision(r)
            assert d is not None
            picks[task].append(d["model"])
            if i in (0, 1, 2, 29):
                print(f"call {i:2d} {task:10s} -> {d['model']:17s} {d['phase']:9s} "
                      f"confidence {d['confidence']:.2f}  decision {d['decision_id']}")
            strategy.flush()  # a script learns call by call; a server needn't wait

    print("\nwho served, first 10 calls vs last 10:")
    for task, models in picks.items():
        first, last = dict(Counter(models[:10])), dict(Counter(models[-10:]))
        print(f"  {task:10s} first {first}  last {last}")

    print("\nwhat Tally learned (quality floor 0.8):")
    for task in calls:
        for s in tally.stats(task, quality_floor=0.8):
            mean = "-" if s["mean_quality"] is None else f"{s['mean_quality']:.2f}"
            print(f"  {task:10s} {s['model']:17s} calls {s['calls']:3d}  quality {mean:>4s}  "
                  f"P(clears floor) {s['confidence']:.2f}  {s['phase']}")

    rows = list(tally.ledger.rows())
    spent = sum(row["cost_usd"] for row in rows)
    all_4o = sum(
        sum(litellm.cost_per_token(model="gpt-4o", prompt_tokens=row["input_tokens"],
                                   completion_tokens=row["output_tokens"]))
        for row in rows
    )
    print(f"\nledger: {len(rows)} calls, ${spent:.6f} spent; "
          f"${all_4o:.6f} had every call gone to gpt-4o")

    # A user's thumbs-down an hour later joins the call by its decision id.
    last = rows[-1]
    tally.feedback(last["decision_id"], quality=0.1, slugs=["incomplete"])
    tally.flush()
    print(f"late feedback on {last['decision_id']} ({last['model']}):",
          tally.ledger.get(last["decision_id"])["quality"])

    print("\nthe decision of a call is in resp._hidden_params['tally'] (get_decision),")
    print("in the x-tally-* response headers and in metadata['tally_decision'].")
    strategy.close()


if __name__ == "__main__":
    main()
