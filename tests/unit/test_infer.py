"""tally_core.infer: task type and complexity read off messages, in-process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tally_core import infer
from tally_core.envelope import KNOWN_TASK_TYPES
from tally_core.infer import Inference, extract_features, infer_fields, infer_task

DATA = Path(__file__).resolve().parent.parent / "data"
ROOT = DATA.parent.parent


def user(text: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text("utf-8").splitlines() if line]


def call_of(row: dict[str, Any]) -> dict[str, Any]:
    messages = ([{"role": "system", "content": row["sys"]}] if row.get("sys") else []) + user(
        row["p"])
    return {
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": "r"}}] if row.get("tools") else None,
        "response_format": {"type": "json_object"} if row.get("json") else None,
    }


# One prompt per task type, none of them in tests/data.
PER_TYPE = {
    "code-generation": "Write a Python function that merges two sorted lists into one sorted list.",
    "code-review": "Please review this pull request diff and flag anything risky before I merge.",
    "code-debug": "My script fails with `KeyError: 'id'` when the API returns an empty list. Why?",
    "summarisation": "Summarise the following report in three bullet points for my manager.",
    "classification": "Classify the sentiment of this tweet as positive, negative or neutral.",
    "extraction": "Extract every date and invoice number from the text below.",
    "reasoning": "If a train leaves at 3pm going 60 km/h, when has it gone 150 km? Step by step.",
    "translation": "Translate this sentence into Portuguese: 'The shop closes at six.'",
    "formatting": "Convert this comma separated list into a markdown table with two columns.",
    "conversation": "hey! how was your weekend?",
    "qa-simple": "What is the capital of Canada?",
    "creative-writing": "Write a short poem about the sea at night.",
    "data-analysis": "Here is our monthly revenue table. Which months are outliers, "
                     "and is there a trend?",
    "architecture-design": "How should we design a scalable notification service with retries "
                           "and per-user preferences?",
}


def test_every_built_in_task_type_has_a_prompt() -> None:
    assert set(PER_TYPE) == set(KNOWN_TASK_TYPES)


@pytest.mark.parametrize("task_type", KNOWN_TASK_TYPES)
def test_each_task_type_is_recognised(task_type: str) -> None:
    r = infer_task(user(PER_TYPE[task_type]))
    assert r.task_type == task_type, (r, PER_TYPE[task_type])
    assert 0.0 <= r.confidence <= 1.0 and 0.0 <= r.complexity <= 1.0
    assert r.confidence >= infer._model().threshold


def test_accuracy_on_the_tune_part_and_on_the_held_out_part() -> None:
    # The held-out part was written before the model and is never fitted on.
    for name, floor in (("infer_prompts_tune.jsonl", 0.95), ("infer_prompts_holdout.jsonl", 0.85)):
        rows = load(name)
        counts = {t: sum(r["t"] == t for r in rows) for t in KNOWN_TASK_TYPES}
        assert min(counts.values()) >= 10 and len(rows) >= 140
        hits = sum(infer_task(**call_of(r)).task_type == r["t"] for r in rows)
        assert hits / len(rows) >= floor, (name, hits, len(rows))


def test_complexity_ranks_the_hard_prompt_of_each_pair_higher() -> None:
    for name in ("infer_prompts_tune.jsonl", "infer_prompts_holdout.jsonl"):
        pairs: dict[str, dict[str, float]] = {}
        for r in load(name):
            if r.get("pair"):
                pairs.setdefault(r["pair"], {})[r["lvl"]] = infer_task(**call_of(r)).complexity
        assert len(pairs) >= 42
        ok = sum(p["hard"] > p["trivial"] for p in pairs.values())
        assert ok / len(pairs) >= 0.9, (name, ok, len(pairs))
    assert infer_task(user("hi")).complexity_level == "low"


def test_empty_and_system_only_calls_return_the_default() -> None:
    for messages in ([], None, [{"role": "system", "content": "You are terse."}],
                     user(""), user("   "), [{"role": "assistant", "content": "Hello!"}]):
        r = infer_task(messages, default="code-review")
        assert r == Inference("code-review", 0.0, 0.0, ("x:empty",), "")


def test_low_confidence_returns_the_default_but_keeps_the_guess() -> None:
    r = infer_task(user("Translate this into French: good morning"), threshold=1.01,
                   default="general")
    assert (r.task_type, r.guessed) == ("general", "translation")
    assert infer_task(user("asdf qwer zxcv"), threshold=0.9).task_type == "general"


def test_the_last_user_turn_decides_and_tool_turns_are_read_through() -> None:
    messages = [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": "Write a poem about spring."},
        {"role": "assistant", "content": "Blossoms..."},
        {"role": "user", "content": "Now translate the poem into German."},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"ok\": true}"},
    ]
    r = infer_task(messages, tools=[{"type": "function", "function": {"name": "lookup"}}])
    assert r.task_type == "translation"
    assert "x:toolturn" in extract_features(messages)


def test_multimodal_parts_read_the_text_and_count_the_media() -> None:
    parts = [{"type": "text", "text": "Extract the merchant, total and date from this receipt."},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    r = infer_task(user(parts))
    assert r.task_type == "extraction"
    assert "x:media" in extract_features(user(parts))
    # An image alone: nothing to read, but not an error.
    assert infer_task(user(parts[1:])).confidence <= 1.0


def test_langchain_style_messages_are_read_by_duck_typing() -> None:
    class Msg:
        def __init__(self, type_: str, content: Any) -> None:
            self.type, self.content = type_, content

    msgs = [Msg("system", "You help with data."), Msg("human", "Summarise this article in "
                                                            "two sentences: ...")]
    assert infer_task(msgs).task_type == "summarisation"
    pytest.importorskip("langchain_core")
    from langchain_core.messages import HumanMessage, SystemMessage

    real = [SystemMessage("Be brief."), HumanMessage("Translate 'thank you' into Japanese.")]
    assert infer_task(real).task_type == "translation"


def test_a_megabyte_of_text_reads_a_bounded_window() -> None:
    big = "Summarise the document below.\n" + ("lorem ipsum dolor sit amet " * 40_000)
    assert len(big) > 1_000_000
    r = infer_task(user(big))
    assert r.task_type == "summarisation"
    read = infer._read(user(big))
    assert len(read.user) <= infer.HEAD_CHARS + infer.TAIL_CHARS + 1
    assert read.user_chars == len(big)  # the size still counts for complexity
    # A megabyte in many parts and many turns is bounded too.
    many = [{"role": "user", "content": [{"type": "text", "text": "x " * 1000}] * 500}] * 300
    assert len(infer._read(many).user) <= infer.HEAD_CHARS + infer.TAIL_CHARS + 1


@pytest.mark.parametrize(("text", "task_type"), [
    ("Traduis en anglais : « Le train part à huit heures. »", "translation"),
    ("Übersetze bitte ins Englische: Wir sehen uns morgen.", "translation"),
    ("把这句话翻译成英文：今天天气很好。", "translation"),
    ("¿Cuál es la capital de Perú?", "qa-simple"),
    ("Écris un poème sur la mer.", "creative-writing"),
])
def test_non_english_prompts(text: str, task_type: str) -> None:
    assert infer_task(user(text)).task_type == task_type


def test_code_fences_and_tracebacks() -> None:
    fenced = ("Why does this throw?\n```python\nitems = {}\nprint(items['a'])\n```\n"
              "KeyError: 'a'")
    r = infer_task(user(fenced))
    assert r.task_type == "code-debug"
    assert "x:fence" in extract_features(user(fenced))
    review = "Review this function for readability:\n```python\ndef f(x): return x*2\n```"
    assert infer_task(user(review)).task_type == "code-review"


def test_json_asks_are_a_signal() -> None:
    msg = user("Pull the name and email out of this signature: Ana Ruiz, ana@example.com")
    feats = extract_features(msg, response_format={"type": "json_object"})
    assert "x:json" in feats
    assert infer_task(msg, response_format={"type": "json_object"}).task_type == "extraction"


def test_signals_are_rule_names_never_prompt_text() -> None:
    canary = "zebracanary"
    texts = [f"Translate {canary} into French", f"{canary} ```{canary}``` error {canary}",
             f"what is {canary}?", canary]
    for text in texts:
        r = infer_task(user(text))
        assert canary not in repr(r)
        assert all(s.startswith(("k:", "sk:", "x:")) for s in r.signals)


def test_deterministic() -> None:
    rows = load("infer_prompts_holdout.jsonl")[:30]
    first = [infer_task(**call_of(r)) for r in rows]
    infer._model.cache_clear()
    assert [infer_task(**call_of(r)) for r in rows] == first


def test_the_fast_path_scores_exactly_the_named_features() -> None:
    # Scoring maps words straight to rows, and joins only the word pairs the
    # model knows; training names every feature. Same rows, each once, and
    # the shared ones are the rule and structure features.
    m = infer._model()
    for r in load("infer_prompts_tune.jsonl")[::3]:
        call = call_of(r)
        read = infer._read(call["messages"])
        parts = infer._parts(read, call["tools"], call["response_format"])
        named = sorted(m.index[f] for f in infer._names(parts) if f in m.index)
        fast = infer._parts(read, call["tools"], call["response_format"], m)
        own, sig = infer._rows(fast, m)
        assert sorted(own + list(sig)) == named
        assert all(i in m.signals for i in sig) and not any(i in m.signals for i in own)


def test_infer_fields_only_fills_what_was_not_given() -> None:
    msgs = user("Translate 'see you soon' into Dutch.")
    assert infer_fields(msgs) == ({"task_type": "translation", "complexity": "low"},
                                  ("task_type", "complexity"))
    assert infer_fields(msgs, {"task_type": "qa"}) == ({"complexity": "low"}, ("complexity",))
    assert infer_fields(msgs, {"task_type": "qa", "complexity": 0.9}) == ({}, ())
    assert infer_fields([]) == ({}, ())
    # Not confident: the caller's default stands, only complexity is filled.
    assert infer_fields(user("zzzz qqqq"), {}, default="general")[1] in (("complexity",),
                                                                        ("task_type", "complexity"))


def test_the_shipped_model_is_what_the_training_script_builds(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import train_infer
    finally:
        sys.path.remove(str(ROOT / "tools"))
    out = tmp_path / "model.json"
    train_infer.write(train_infer.load(train_infer.TUNE), out)
    built = json.loads(out.read_text("utf-8"))
    shipped = json.loads((ROOT / "tally_core" / "data" / "infer_model.json").read_text("utf-8"))
    assert built["features"] == shipped["features"]
    assert np.allclose(built["weights"], shipped["weights"], atol=2e-4)
    assert built["complexity"] == shipped["complexity"]


def test_explain_and_to_dict_name_the_inferred_fields() -> None:
    import dataclasses

    from tally_core import Tally

    tally = Tally(["gpt-4o-mini", "gpt-4o"], fallback="gpt-4o", store=":memory:", seed=1)
    try:
        d = tally.route(task_type="translation", complexity="low")
        assert d.inferred == () and "inferred" not in d.explain()
        d = dataclasses.replace(d, inferred=("task_type", "complexity"))
        assert "inferred from the messages: task_type=translation, complexity=low" in d.explain()
        assert d.to_dict()["inferred"] == ["task_type", "complexity"]
    finally:
        tally.close()


def test_envelope_complexity_accepts_a_score_or_a_level() -> None:
    from tally_core import Envelope, InvalidFieldError

    assert Envelope(task_type="qa", complexity=0.2).complexity_level == "low"
    assert Envelope(task_type="qa", complexity=" High ").complexity_level == "high"
    assert Envelope(task_type="qa").complexity_level is None
    for bad in (1.5, -0.1, float("nan"), True, "extreme", [0.5]):
        with pytest.raises(InvalidFieldError) as info:
            Envelope(task_type="qa", complexity=bad)
        assert info.value.field == "complexity" and "low, medium, high" in str(info.value)


def test_complexity_of_a_given_task_type_skips_classification() -> None:
    from tally_core.infer import infer_complexity

    msgs = user("How should we shard the orders table across regions?")
    hard, light = infer_complexity(msgs, "architecture-design"), infer_complexity(msgs, "qa-simple")
    assert hard is not None and light is not None and 0 <= light < hard <= 1
    assert infer_complexity([], "qa-simple") is None
    fields, inferred = infer_fields(msgs, {"task_type": "architecture-design"})
    assert inferred == ("complexity",)
    assert fields["complexity"] == infer.complexity_level(hard)
    # A task type the envelope will reject: nothing inferred, the envelope names the field.
    assert infer_fields(msgs, {"task_type": "not a type!"}) == ({}, ())
