"""tally_core.cascade: checks, the learned entry tier, the floor, cost accounting (host-free)."""

from __future__ import annotations

import pytest

from tally_core import InvalidFieldError, Tally
from tally_core.cascade import (
    Cascade,
    CheckScore,
    JsonValid,
    Judge,
    Matches,
    NonEmpty,
    NoRefusal,
    entry_tier,
    response_text,
)

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
TASK = "extraction"


def teach(tally: Tally, model: str, passes: int, fails: int) -> None:
    for q in [1.0] * passes + [0.0] * fails:
        tally.telemetry(model=model, task_type=TASK, quality=q, input_tokens=200,
                        output_tokens=100)
    assert tally.flush()


@pytest.fixture
def tally():
    t = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=5)
    yield t
    t.close()


def test_built_in_checks_accept_and_reject():
    assert NonEmpty(min_chars=3)({}, "abc") and not NonEmpty(min_chars=3)({}, "  ab ")
    assert not NoRefusal()({}, "As an AI language model, I cannot browse.")
    assert NoRefusal()({}, "The answer is 42.")
    assert JsonValid()({}, '```json\n{"a": 1}\n```') and not JsonValid()({}, "{a: 1}")
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    assert JsonValid(schema)({}, '{"name": "Ada", "age": 36}')
    assert not JsonValid(schema)({}, '{"name": "Ada"}')
    assert not JsonValid(schema)({}, '{"name": "Ada", "age": "36"}')
    assert not JsonValid(schema)({}, '{"name": "Ada", "age": true}')
    assert Matches(r"^\d{4}-\d{2}-\d{2}$")({}, "2026-12-01")
    assert not Matches(r"^\d{4}-\d{2}-\d{2}$")({}, "December 1st")


def test_response_text_reads_the_shapes_hosts_return():
    class Msg:
        content = [{"type": "text", "text": "a"}, "b"]

    assert response_text({"choices": [{"message": {"content": "x"}}]}) == "x"
    assert response_text(Msg()) == "ab"
    assert response_text(None) == ""


def test_judge_grades_with_the_model_it_is_given_and_counts_its_cost():
    asked: list[str] = []

    def ask(prompt: str) -> tuple[str, float]:
        asked.append(prompt)
        return ("8" if "Paris" in prompt else "2"), 0.0003

    j = Judge(ask=ask, threshold=0.7)
    good = j({"messages": [{"role": "user", "content": "Capital of France?"}]}, "Paris")
    bad = j({"messages": [{"role": "user", "content": "Capital of France?"}]}, "Lyon")
    assert good == CheckScore(1.0, 0.0003)
    assert bad.score < 0.5 and bad.cost_usd == 0.0003
    assert "Capital of France?" in asked[0]


def test_entry_tier_minimises_expected_cost():
    # Three tiers costing 1, 4, 20: E2 = 20, E1 = 4 + (1-p1) * 20, E0 = 1 + (1-p0) * E1.
    assert entry_tier([1, 4, 20], [0.5, 0.5, 1]) == 0   # E0 = 8, E1 = 14
    assert entry_tier([1, 4, 20], [0.02, 0.9, 1]) == 1  # E0 = 6.88, E1 = 6
    assert entry_tier([1, 4, 20], [0.0, 0.0, 1]) == 2   # neither cheap tier ever passes
    with pytest.raises(ValueError):
        entry_tier([1, 2], [0.5])


def test_new_tiers_start_at_the_cheapest_by_cost_ending_at_the_fallback(tally):
    run = Cascade(checks=[NonEmpty()]).start(tally, {"task_type": TASK})
    assert run.tiers == ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
    assert run.entry == 0 and run.next_tier() == (0, "gpt-4o-mini")
    env = run.envelope_for(1)
    assert env["allowed_models"] == ("claude-haiku-4-5",)
    assert {"cascade", f"cascade:{run.cascade_id}", "tier:1"} <= set(env["tags"])


def test_after_learning_that_the_cheapest_fails_90_percent_it_starts_one_tier_up(tally):
    teach(tally, "claude-haiku-4-5", passes=4, fails=36)  # 10% pass; ~0.5x the fallback's cost
    teach(tally, "gpt-4o", passes=20, fails=0)
    tiers = ["claude-haiku-4-5", "gpt-4o"]
    plan = Cascade(checks=[NonEmpty()], tiers=tiers, explore=0.0)
    assert plan.start(tally, {"task_type": TASK}).entry == 1
    # Before learning, or without the learned entry, it starts at the bottom.
    assert plan.start(tally, {"task_type": "code-review"}).entry == 0
    assert Cascade(checks=[NonEmpty()], tiers=tiers, learn_entry=False).start(
        tally, {"task_type": TASK}).entry == 0
    # A small exploration share still starts at the cheapest tier now and then.
    explorer = Cascade(checks=[NonEmpty()], tiers=tiers, explore=0.2, seed=11)
    starts = [explorer.start(tally, {"task_type": TASK}).entry for _ in range(400)]
    assert 0.12 < starts.count(0) / 400 < 0.28


def test_a_tier_so_cheap_that_even_a_10_percent_pass_rate_pays_is_still_tried_first(tally):
    # gpt-4o-mini costs ~1/8 of haiku per call here: 0.1 x saving > the detour.
    teach(tally, "gpt-4o-mini", passes=4, fails=36)
    teach(tally, "claude-haiku-4-5", passes=38, fails=2)
    teach(tally, "gpt-4o", passes=20, fails=0)
    run = Cascade(checks=[NonEmpty()], explore=0.0).start(tally, {"task_type": TASK})
    assert run.tiers[0] == "gpt-4o-mini" and run.entry == 0
    teach(tally, "gpt-4o-mini", passes=0, fails=200)  # now ~2%: below the cost ratio
    assert Cascade(checks=[NonEmpty()], explore=0.0).start(tally, {"task_type": TASK}).entry == 1


def test_a_tier_with_evidence_of_failing_the_floor_is_never_tried(tally):
    teach(tally, "gpt-4o-mini", passes=2, fails=60)
    run = Cascade(checks=[NonEmpty()], explore=1.0).start(
        tally, {"task_type": TASK, "quality_floor": 0.8})
    assert "gpt-4o-mini" not in run.tiers
    assert run.tiers[-1] == "gpt-4o"


def test_record_escalates_feeds_back_the_checks_and_sums_every_attempts_cost(tally):
    plan = Cascade(checks=[NonEmpty(min_chars=5), NoRefusal()])
    run = plan.start(tally, {"task_type": TASK})
    d0 = tally.route(run.envelope_for(0))
    tally.telemetry(d0, success=True, input_tokens=10, output_tokens=5)
    a0 = run.record(0, {"messages": []}, "I can't help with that.", cost_usd=0.001,
                    latency_ms=3.0, decision_id=d0.decision_id, model=d0.model)
    assert not a0.passed and a0.quality == 0.0 and run.next_tier() == (1, "claude-haiku-4-5")
    d1 = tally.route(run.envelope_for(1))
    tally.telemetry(d1, success=True, input_tokens=10, output_tokens=5)
    a1 = run.record(1, {"messages": []}, "Ada Lovelace, 1815", cost_usd=0.004,
                    latency_ms=5.0, decision_id=d1.decision_id, model=d1.model)
    assert a1.passed and run.next_tier() is None
    result = run.result("Ada Lovelace, 1815")
    assert (result.model, result.tier) == ("claude-haiku-4-5", 1)
    assert result.cost_usd == pytest.approx(0.005)
    assert tally.flush()
    rows = {r["decision_id"]: r for r in tally.ledger.rows()}
    assert rows[d0.decision_id]["quality"] == 0.0 and rows[d1.decision_id]["quality"] == 1.0
    assert "cascade" in rows[d0.decision_id]["tags"]


def test_the_last_tier_is_accepted_whatever_its_checks_say(tally):
    run = Cascade(checks=[NonEmpty()], tiers=["gpt-4o-mini", "gpt-4o"]).start(
        tally, {"task_type": TASK})
    run.record(0, {}, "", cost_usd=0.001, latency_ms=1.0, decision_id=None)
    last = run.record(1, {}, "", cost_usd=0.01, latency_ms=1.0, decision_id=None)
    assert last.passed and last.quality == 0.0 and run.next_tier() is None


def test_a_check_that_raises_rejects_rather_than_breaking_the_call(tally):
    def broken(request, response):
        raise RuntimeError("boom")

    run = Cascade(checks=[broken]).start(tally, {"task_type": TASK})
    assert not run.record(0, {}, "x", cost_usd=None, latency_ms=1.0, decision_id=None).passed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"checks": []}, "checks"), ({"checks": ["no"]}, "checks"),
     ({"checks": [NonEmpty()], "tiers": []}, "tiers"),
     ({"checks": [NonEmpty()], "explore": 2.0}, "explore"),
     ({"checks": [NonEmpty()], "pass_score": -1}, "pass_score")],
)
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(InvalidFieldError) as err:
        Cascade(**kwargs)
    assert err.value.field == field


def test_unknown_tier_names_the_field(tally):
    with pytest.raises(InvalidFieldError, match="tiers"):
        Cascade(checks=[NonEmpty()], tiers=["nope", "gpt-4o"]).start(tally, {"task_type": TASK})
