"""A real litellm.Router with no envelope on any call: Tally infers task type and complexity."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tally_core import Tally
from tally_litellm import TallyStrategy, get_decision

from .litellm_support import POOL, dep, installed, make_router, rows

TRANSLATE = [
    "Translate 'the meeting starts at nine' into German.",
    "How do you say 'where is the station' in Italian?",
    "Traduis en anglais : « Merci pour votre patience. »",
    "Please put this sentence into Spanish: 'Your order has shipped.'",
]
DEBUG = [
    "My script crashes with `TypeError: 'NoneType' object is not subscriptable`. How do I fix it?",
    "Why does this loop never end?\n```python\nwhile i < 3:\n    print(i)\n```",
    "Getting 'ModuleNotFoundError: No module named yaml' in CI but it works locally.",
    "After renaming a folder, Jest fails with 'Cannot find module ./utils'. How do I fix it?",
]
# Which model is good at what: the cheapest model translates well but cannot debug.
QUALITY = {("translation", "gpt-4o-mini"): 0.97, ("code-debug", "gpt-4o-mini"): 0.2}


def scorer(request: dict[str, Any], response: Any) -> float:
    return QUALITY.get((request["task_type"], request["model"]), 0.95)


def test_calls_without_an_envelope_land_in_task_types_that_learn_separately() -> None:
    with installed(scorer=scorer, default_envelope={"quality_floor": 0.8}) as (
            router, tally, strategy):
        seen: Counter[tuple[str, str]] = Counter()
        for i in range(120):
            texts = TRANSLATE if i % 2 == 0 else DEBUG
            r = router.completion(model="auto",
                                  messages=[{"role": "user", "content": texts[i % 4]}])
            info = get_decision(r)
            assert info is not None
            assert info["inferred"] == ["task_type", "complexity"]
            seen[(info["task_type"], "translate" if texts is TRANSLATE else "debug")] += 1
        assert strategy.flush()
        assert seen == {("translation", "translate"): 60, ("code-debug", "debug"): 60}
        by_task = Counter(row["task_type"] for row in rows(tally))
        assert by_task == {"translation": 60, "code-debug": 60}
        # The ledger says which fields were inferred (names only, never text).
        assert Counter(row["inferred"] for row in rows(tally)) == {"task_type,complexity": 120}
        mini = {t: next(s for s in tally.stats(t, quality_floor=0.8) if s["model"] == "gpt-4o-mini")
                for t in ("translation", "code-debug")}
        assert mini["translation"]["mean_quality"] > 0.8
        assert mini["code-debug"]["mean_quality"] < 0.4
        # What each task type learned shows in where its calls go now.
        served = {t: Counter() for t in ("translation", "code-debug")}
        for i in range(40):
            texts = TRANSLATE if i % 2 == 0 else DEBUG
            info = get_decision(router.completion(
                model="auto", messages=[{"role": "user", "content": texts[i % 4]}]))
            served[info["task_type"]][info["model"]] += 1
        assert strategy.flush()
        assert served["translation"]["gpt-4o-mini"] >= 15
        assert served["code-debug"]["gpt-4o-mini"] == 0  # seen failing the floor there
        # Seen failing the floor there: never exploited (excluded once the evidence is
        # strong, which depends on how many learning calls the policy spent on it).
        assert mini["code-debug"]["phase"] != "exploit"
        assert mini["code-debug"]["confidence"] < 0.05
        assert strategy.errors == {}


def test_given_fields_win_and_infer_false_turns_it_off() -> None:
    msgs = [{"role": "user", "content": "Translate 'good luck' into French."}]
    with installed() as (router, tally, strategy):
        info = get_decision(router.completion(model="auto", messages=msgs,
                                              metadata={"tally": {"task_type": "qa"}}))
        assert (info["task_type"], info["inferred"]) == ("qa-simple", ["complexity"])
        info = get_decision(router.completion(
            model="auto", messages=msgs,
            metadata={"tally": {"task_type": "qa", "complexity": "high"}}))
        assert (info["task_type"], info["inferred"]) == ("qa-simple", [])
        strategy.flush()
    with installed(infer=False, task_type="summarisation") as (router, tally, strategy):
        info = get_decision(router.completion(model="auto", messages=msgs))
        assert (info["task_type"], info["inferred"]) == ("summarisation", [])
        strategy.flush()


def test_a_bad_infer_switch_is_a_clear_error() -> None:
    tally = Tally(POOL, fallback="gpt-4o", store=":memory:")
    try:
        with pytest.raises(ValueError, match="infer"):
            TallyStrategy(tally, infer="no")  # type: ignore[arg-type]
    finally:
        tally.close()


def test_no_prompt_text_reaches_a_stored_file_or_a_log(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    canary = "quokka-canary-91c2"
    router = make_router([dep("gpt-4o-mini", "mini"), dep("claude-haiku-4-5", "haiku"),
                          dep("openai/gpt-4o", "4o")])
    tally = Tally(POOL, fallback="gpt-4o", store=str(tmp_path / "state"), seed=5)
    strategy = TallyStrategy(tally, scorer=lambda req, resp: 0.9).install(router)
    prompts = [f"Translate '{canary}' into German.", f"```python\n{canary}()\n```\nKeyError: x",
               f"Summarise: {canary} " * 50, f"{canary}?"]
    try:
        with caplog.at_level(logging.DEBUG, logger="tally_core"), \
                caplog.at_level(logging.DEBUG, logger="tally_litellm"):
            infos = []
            for i in range(8):
                r = router.completion(model="auto", messages=[
                    {"role": "system", "content": f"system {canary}"},
                    {"role": "user", "content": prompts[i % 4]}])
                infos.append(get_decision(r))
            assert strategy.flush()
        assert len(rows(tally)) == 8
        assert all(info["inferred"] for info in infos)
        assert canary not in repr(infos)
        assert canary not in repr(list(rows(tally)))
    finally:
        strategy.close()
        tally.close()
    tally_logs = [r.getMessage() for r in caplog.records if r.name.startswith("tally")]
    assert all(canary not in m for m in tally_logs)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert canary.encode() not in path.read_bytes(), path


def test_inference_that_fails_routes_the_call_anyway(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import tally_litellm._envelope as envelope_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the prompt was: secret-words")

    monkeypatch.setattr(envelope_module, "infer_fields", broken)
    msgs = [{"role": "user", "content": "Translate 'hello' into Greek."}]
    with installed(task_type="summarisation") as (router, tally, strategy):
        with caplog.at_level(logging.DEBUG, logger="tally_litellm"):
            infos = [get_decision(router.completion(model="auto", messages=msgs))
                     for _ in range(3)]
        assert strategy.flush()
        for info in infos:
            assert (info["routed_by"], info["task_type"], info["inferred"]) == (
                "tally", "summarisation", [])
        assert strategy.errors == {"infer": 3}
        assert all("secret-words" not in r.getMessage() for r in caplog.records)
        assert len(rows(tally)) == 3
