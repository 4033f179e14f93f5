"""Floor difficulty: the calls below the floor that learning a floor takes,
whatever the policy, on generated tables whose true qualities the test
knows exactly."""

from __future__ import annotations

import math
import random

import pytest

from tally_core.errors import InvalidFieldError
from tally_core.eval import bench
from tally_core.eval.difficulty import bernoulli_kl, floor_difficulty, wald_calls
from tally_core.eval.replay import read_table, replay

HEADER = "prompt_id,task_type,model,quality,input_tokens,output_tokens,cost_usd"
#: model -> cost per call; "big" is the fallback.
PRICES = {"tiny": 0.001, "small": 0.002, "mid": 0.002, "big": 0.010}


def table(qualities: dict[str, dict[str, float]], prompts: int = 1000, graded: bool = False):
    """Each task type's prompts with every model's outcome; exactly
    round(q * prompts) successes per model (the truth is q to 1/prompts)."""
    rng = random.Random(7)
    lines = [HEADER]
    for task, qs in qualities.items():
        wins = {}
        for m, q in qs.items():
            k = round(q * prompts)
            w = [1.0] * k + [0.0] * (prompts - k)
            rng.shuffle(w)
            wins[m] = w
        for i in range(prompts):
            for m in qs:
                q = wins[m][i]
                if graded:  # the same mean, graded 0.05 either side of it
                    q = round(qs[m] + (0.05 if i % 2 else -0.05), 4)
                lines.append(f"{task}-{i},{task},{m},{q},100,256,{PRICES[m]}")
    return read_table(lines, "csv", name="gen")


def test_kl_and_wald_calls() -> None:
    # KL by hand: p ln(p/q) + (1-p) ln((1-p)/(1-q)).
    want = 0.3 * math.log(0.3 / 0.4) + 0.7 * math.log(0.7 / 0.6)
    assert bernoulli_kl(0.3, 0.4) == pytest.approx(want)
    assert wald_calls(want) == pytest.approx(0.8 * math.log(9) / want)
    assert wald_calls(0.0) == math.inf
    with pytest.raises(InvalidFieldError, match="error"):
        wald_calls(0.1, error=0.5)


def test_a_cheaper_rival_just_below_the_floor_is_the_hard_case() -> None:
    t = table(
        {
            # tiny is the cheapest and 1 point below: telling it from small
            # (3 points above) is the cost of learning this floor.
            "hard": {"tiny": 0.77, "small": 0.81, "mid": 0.60, "big": 0.90},
            # the cheapest candidate clears: learnable on calls that clear.
            "easy": {"tiny": 0.83, "small": 0.79, "mid": 0.70, "big": 0.90},
            # a same-price rival far below: a few calls.
            "far": {"tiny": 0.20, "small": 0.85, "mid": 0.60, "big": 0.90},
        }
    )
    d = floor_difficulty(t, {"hard": 0.78, "easy": 0.78, "far": 0.78}, "big",
                         calls={"hard": 2000, "easy": 2000, "far": 2000})  # fmt: skip
    hard = d["hard"]
    assert (hard.target, hard.rival) == ("small", "tiny")
    assert hard.target_quality == pytest.approx(0.81)
    want = 0.8 * math.log(9) / bernoulli_kl(0.77, 0.81) / 2
    assert hard.expected_violations == pytest.approx(want)
    assert 150 < hard.expected_violations < 250  # about 190: 9.6% of 2,000 calls
    assert hard.share_of_calls == pytest.approx(want / 2000)
    assert d["easy"].rival is None and d["easy"].expected_violations == 0.0
    assert d["easy"].target == "tiny"
    # far: the rival tiny (0.20) is 65 points below; mid (0.60, same price
    # as small) is the harder one, still only a few calls.
    assert d["far"].rival == "mid" and d["far"].expected_violations < 10


def test_nothing_clears_or_no_floor_is_no_difficulty() -> None:
    t = table({"x": {"tiny": 0.5, "small": 0.6, "mid": 0.6, "big": 0.7}}, prompts=200)
    assert floor_difficulty(t, {"x": 0.9}, "big")["x"].target is None
    assert floor_difficulty(t, {"x": None}, "big") == {}


def test_graded_outcomes_use_their_own_spread() -> None:
    """Graded outcomes of the same means, 0.05 either side of them, are far
    easier to tell apart than 0/1 ones: a normal KL with their own spread
    (0.04**2 / (2 * 0.05**2) = 0.32), about 3 calls instead of about 190."""
    q = {"hard": {"tiny": 0.77, "small": 0.81, "mid": 0.60, "big": 0.90}}
    binary = floor_difficulty(table(q), {"hard": 0.78}, "big")["hard"]
    graded = floor_difficulty(table(q, graded=True), {"hard": 0.78}, "big")["hard"]
    assert graded.rival == "tiny"
    assert graded.expected_violations == pytest.approx(0.8 * math.log(9) / 0.32 / 2, rel=0.01)
    assert binary.expected_violations > 150


def test_replay_reports_the_difficulty_and_the_command_prints_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    t = table({"hard": {"tiny": 0.77, "small": 0.81, "mid": 0.60, "big": 0.90}}, prompts=300)
    r = replay(t, floor={"hard": 0.78}, routers=("tally",), calls=600, best="big")
    d = r["difficulty"]["hard"]
    assert d["rival"] == "tiny" and d["calls"] == 600
    text = bench.format_table(r)
    assert "floor difficulty" in text and "hard (floor 0.78): small 0.810 vs tiny 0.770" in text
    assert f"about {d['expected_violations']:.0f} calls" in text
