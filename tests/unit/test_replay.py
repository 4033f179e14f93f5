"""Replay on logged outcomes: figures hand-checked on a tiny table, Tally on the
shipped example, and an error naming the line and the field for each kind of
malformed file."""

from __future__ import annotations

import csv
import json
import pickle
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from tally_core.errors import InvalidFieldError
from tally_core.eval import bench
from tally_core.eval.replay import (
    ReplayFileError,
    example_path,
    load_table,
    parse_floor,
    read_table,
    replay,
)

HEADER = "prompt_id,task_type,model,quality,input_tokens,output_tokens,cost_usd"
# Two classification prompts, three reasoning prompts (graded pass/fail), three
# models not in any price map, priced by cost_usd. True quality per task type:
#   classification: small 0.85, mid 0.95, large 1.0
#   reasoning:      small 1/3,  mid 2/3,  large 1.0
TINY = f"""{HEADER}
c1,classification,small,0.9,100,10,0.001
c1,classification,mid,1.0,100,10,0.004
c1,classification,large,1.0,100,10,0.010
c2,classification,small,0.8,100,10,0.001
c2,classification,mid,0.9,100,10,0.004
c2,classification,large,1.0,100,10,0.010
r1,reasoning,small,false,100,10,0.002
r1,reasoning,mid,true,100,10,0.006
r1,reasoning,large,true,100,10,0.020
r2,reasoning,small,true,100,10,0.002
r2,reasoning,mid,false,100,10,0.006
r2,reasoning,large,true,100,10,0.020
r3,reasoning,small,false,100,10,0.002
r3,reasoning,mid,true,100,10,0.006
r3,reasoning,large,true,100,10,0.020
"""

#: The seed-landscape scenario's floors, which the example file comes from.
SCENARIO_FLOORS = "0.8,code-generation=0.85,reasoning=0.85,architecture-design=0.85"


def write(tmp_path: Path, text: str, name: str = "evals.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def to_jsonl(csv_path: Path, out: Path) -> Path:
    """The same table as JSONL, with typed values (numbers, JSON booleans)."""
    with csv_path.open(encoding="utf-8", newline="") as f, out.open("w", encoding="utf-8") as o:
        for row in csv.DictReader(f):
            rec: dict[str, Any] = dict(row)
            q = rec["quality"]
            rec["quality"] = q == "true" if q in ("true", "false") else float(q)
            for k in ("input_tokens", "output_tokens"):
                rec[k] = int(rec[k])
            for k in ("latency_ms", "cost_usd"):
                if k in rec:
                    rec[k] = float(rec[k])
            o.write(json.dumps(rec) + "\n")
    return out


def strip_timing(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(result))
    for d in out["routers"].values():
        d.pop("seconds")
    for k in ("file", "scenario"):
        out.pop(k)
    return out


# -- figures on a hand-checked table ------------------------------------------


def test_table_is_grouped_by_prompt_with_true_quality_per_task(tmp_path: Path) -> None:
    t = load_table(write(tmp_path, TINY))
    assert [p.prompt_id for p in t.prompts] == ["c1", "c2", "r1", "r2", "r3"]
    assert t.models == ["small", "mid", "large"]  # cheapest first
    assert t.rows == 15 and t.task_types == {"classification": 2, "reasoning": 3}
    truth = t.truth()
    assert truth["classification"] == pytest.approx({"small": 0.85, "mid": 0.95, "large": 1.0})
    assert truth["reasoning"] == pytest.approx({"small": 1 / 3, "mid": 2 / 3, "large": 1.0})
    assert t.best_model() == "large"
    # Models outside the price map are priced at their logged cost per token.
    assert t.specs["small"].input_cost_per_mtok == pytest.approx(0.008 / 550 * 1e6)


def test_oracle_and_baselines_match_hand_computed_figures(tmp_path: Path) -> None:
    r = replay(
        write(tmp_path, TINY),
        floor=0.8,
        routers=("always-cheapest", "hindsight"),
    )
    assert r["calls"] == 5 and r["prompts"] == 5 and r["best"] == "large"
    o, b, c, h = (
        r["routers"][k] for k in ("oracle", "always-best", "always-cheapest", "hindsight")
    )
    # Oracle: small on classification (0.85 >= 0.8); only large clears reasoning.
    assert o["cost_usd"] == pytest.approx(0.001 + 0.001 + 3 * 0.020)
    assert o["mean_quality"] == pytest.approx((0.9 + 0.8 + 1 + 1 + 1) / 5)
    assert o["violation_rate"] == 0.0
    assert o["share"] == pytest.approx({"small": 0.4, "mid": 0.0, "large": 0.6})
    reasoning = dict(o["per_task"]["reasoning"])
    assert reasoning.pop("models") == {"large": 3}  # the models the task type's calls went to
    assert reasoning == pytest.approx(
        {"calls": 3, "cost_usd": 0.06, "quality": 1.0, "violations": 0}
    )
    # Always-best: large everywhere.
    assert b["cost_usd"] == pytest.approx(2 * 0.010 + 3 * 0.020)
    assert b["mean_quality"] == pytest.approx(1.0)
    # Always-cheapest: small everywhere; its 3 reasoning calls break the floor.
    assert c["cost_usd"] == pytest.approx(2 * 0.001 + 3 * 0.002)
    assert c["mean_quality"] == pytest.approx((0.9 + 0.8 + 0 + 1 + 0) / 5)
    assert c["violation_rate"] == pytest.approx(3 / 5)
    assert c["violations"] == 3 and "violations_by_phase" not in c  # Tally's only
    assert c["cost_vs_best"] == pytest.approx(0.008 / 0.08)
    assert c["oracle_savings_share"] == pytest.approx((0.08 - 0.008) / (0.08 - 0.062))
    assert c["cost_regret_usd"] == pytest.approx(0.008 - 0.062)
    assert c["violation_regret"] == pytest.approx(0.6)
    # Hindsight knows each prompt's grade: small, small, mid, small, mid -- and
    # is judged on the true quality like everyone: r1, r2, r3 break the floor.
    assert h["cost_usd"] == pytest.approx(0.001 + 0.001 + 0.006 + 0.002 + 0.006)
    assert h["mean_quality"] == pytest.approx((0.9 + 0.8 + 1 + 1 + 1) / 5)
    assert h["violation_rate"] == pytest.approx(3 / 5)
    assert list(r["routers"]) == ["always-cheapest", "hindsight", "always-best", "oracle"]


def test_floors_per_task_parity_and_cycling(tmp_path: Path) -> None:
    path = write(tmp_path, TINY)
    # classification 0.9 -> mid (0.95); reasoning 0.6 -> mid (2/3).
    r = replay(path, floor={"classification": 0.9, "reasoning": 0.6}, routers=())
    assert r["floors"] == {"classification": 0.9, "reasoning": 0.6}
    assert r["routers"]["oracle"]["cost_usd"] == pytest.approx(2 * 0.004 + 3 * 0.006)
    # The same from --floor text; the bare value is the rest's floor.
    assert parse_floor("0.6,classification=0.9") == {"*": 0.6, "classification": 0.9}
    r2 = replay(path, floor="0.6,classification=0.9", routers=())
    assert r2["routers"]["oracle"]["cost_usd"] == pytest.approx(0.026)
    # Parity: within 0.02 of the best true quality -> large on both task types.
    r3 = replay(path, floor=None, routers=())
    assert r3["floors"] == {"classification": None, "reasoning": None}
    assert r3["routers"]["oracle"]["cost_usd"] == pytest.approx(0.08)
    # calls beyond the file cycle through it again, in file order.
    r4 = replay(path, floor=0.8, calls=12, routers=())
    assert r4["calls"] == 12
    assert r4["routers"]["oracle"]["cost_usd"] == pytest.approx(2 * 0.062 + 0.001 + 0.001)
    with pytest.raises(InvalidFieldError) as e:
        replay(path, floor={"summarization": 0.8}, routers=())
    assert e.value.field == "floor" and "'summarization'" in str(e.value)
    with pytest.raises(InvalidFieldError) as e:
        replay(path, floor="1.5", routers=())
    assert e.value.field == "floor"
    with pytest.raises(InvalidFieldError) as e:
        replay(path, routers=("nope",))
    assert e.value.field == "routers"


def test_prompts_answered_by_some_models_only_restrict_the_choice(tmp_path: Path) -> None:
    text = TINY.replace("c2,classification,small,0.8,100,10,0.001\n", "")
    text = text.replace("r2,reasoning,large,true,100,10,0.020\n", "")
    t = load_table(write(tmp_path, text))
    assert list(t.prompts[1].rows) == ["mid", "large"]
    r = replay(t, floor=0.8, calls=200, shuffle=True, seed=3, routers=("tally", "thompson"))
    # Nobody chose a model without a row (replay raises if one does); the
    # oracle takes mid on c2 (small did not answer it) and, for r2, the best
    # it can get from small and mid.
    assert r["routers"]["tally"]["calls"] == 200
    o = replay(t, floor=0.8, routers=())["routers"]["oracle"]
    assert o["cost_usd"] == pytest.approx(0.001 + 0.004 + 0.020 + 0.006 + 0.020)


# -- formats --------------------------------------------------------------------


def test_csv_and_jsonl_give_identical_results(tmp_path: Path) -> None:
    sub = tmp_path / "example.csv"
    with example_path().open(encoding="utf-8") as f:
        lines = f.readlines()
    sub.write_text("".join(lines[: 1 + 6 * 120]), encoding="utf-8")  # 120 prompts
    jl = to_jsonl(sub, tmp_path / "example.jsonl")
    kw: dict[str, Any] = {"floor": SCENARIO_FLOORS, "calls": 400, "shuffle": True, "seed": 5}
    a = replay(sub, **kw)
    b = replay(jl, **kw)
    assert strip_timing(a) == strip_timing(b)
    c = replay(jl.rename(tmp_path / "example.txt"), file_format="jsonl", **kw)
    assert strip_timing(c) == strip_timing(a)


def test_bool_qualities(tmp_path: Path) -> None:
    text = f"""{HEADER}
p1,qa-simple,a,true,10,5,0.1
p1,qa-simple,b,FALSE,10,5,0.2
p2,qa-simple,a,1,10,5,0.1
p2,qa-simple,b,0,10,5,0.2
p3,qa-simple,a,True,10,5,0.1
p3,qa-simple,b,1.0,10,5,0.2
"""
    t = load_table(write(tmp_path, text))
    qs = [(o.prompt_id, o.model, o.quality) for o in t.outcomes()]
    assert qs == [
        ("p1", "a", 1.0),
        ("p1", "b", 0.0),
        ("p2", "a", 1.0),
        ("p2", "b", 0.0),
        ("p3", "a", 1.0),
        ("p3", "b", 1.0),
    ]
    jl = tmp_path / "q.jsonl"
    jl.write_text(
        "\n".join(
            json.dumps(
                {
                    "prompt_id": p,
                    "task_type": "qa-simple",
                    "model": m,
                    "quality": q,
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "cost_usd": 0.1,
                }
            )
            for p, m, q in [("p1", "a", True), ("p1", "b", False), ("p2", "a", 1), ("p2", "b", 0)]
        ),
        encoding="utf-8",
    )
    assert [o.quality for o in load_table(jl).outcomes()] == [1.0, 0.0, 1.0, 0.0]
    # Task types normalise as in an Envelope; catalog models need no cost_usd.
    t2 = read_table(
        [
            "prompt_id,task_type,model,quality,input_tokens,output_tokens",
            "x,Summarization,gpt-4o-mini,0.9,1000000,0",
            "x,Summarization,gpt-4o,0.95,1000000,0",
        ],
        "csv",
    )
    assert t2.prompts[0].task_type == "summarisation"
    mini = t2.prompts[0].rows["gpt-4o-mini"]
    assert mini.cost_usd == pytest.approx(t2.specs["gpt-4o-mini"].input_cost_per_mtok or -1)


# -- malformed files ------------------------------------------------------------


def bad(tmp_path: Path, text: str, name: str = "evals.csv") -> ReplayFileError:
    path = write(tmp_path, text, name)
    with pytest.raises(ReplayFileError) as e:
        load_table(path)
    err = e.value
    assert str(err).startswith(f"{path}, line {err.line}: {err.field}: ")
    return err


ROW = "p1,classification,gpt-4o-mini,0.9,100,10,0.001"
ROW2 = "p1,classification,gpt-4o,0.95,100,10,0.01"


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        (  # missing column
            "prompt_id,task_type,model,input_tokens,output_tokens\np1,qa-simple,a,1,1\n",
            1,
            "quality",
            "missing column quality",
        ),
        (f"{HEADER}\n{ROW}\n{ROW2}\np2,qa-simple,a,1.5,1,1,0.1\n", 4, "quality", "1.5"),
        (f"{HEADER}\n{ROW}\n{ROW2}\np2,qa-simple,a,abc,1,1,0.1\n", 4, "quality", "'abc'"),
        (f"{HEADER}\n{ROW}\n{ROW2}\np2,qa-simple,a,nan,1,1,0.1\n", 4, "quality", "between 0"),
        (  # a prompt with one model only: the line of its row
            f"{HEADER}\n{ROW}\n{ROW2}\np2,qa-simple,gpt-4o,1,1,1,0.1\n",
            4,
            "prompt_id",
            "one model only (gpt-4o)",
        ),
        (  # a model not in the price map, without cost_usd
            f"{HEADER}\n{ROW}\np1,classification,my-finetune-xyz,0.9,100,10,\n",
            3,
            "cost_usd",
            "'my-finetune-xyz' is not in the price map",
        ),
        ("", 1, "header", "empty"),
        (f"{HEADER}\n", 2, "rows", "no rows"),
        (f"{HEADER}\n{ROW}\np1,classification,gpt-4o,0.9,-5,10,0.1\n", 3, "input_tokens", "-5"),
        (f"{HEADER}\n{ROW}\np1,classification,gpt-4o,0.9,5,1.5,0.1\n", 3, "output_tokens", "1.5"),
        (f"{HEADER}\n{ROW}\np1,classification,gpt-4o,0.9,5,1,free\n", 3, "cost_usd", "free"),
        (f"{HEADER}\n{ROW}\np1,classification,gpt-4o,,5,1,0.1\n", 3, "quality", "empty"),
        (f"{HEADER}\n{ROW}\np1,classification,gpt-4o,0.9,5\n", 3, "output_tokens", "5 values"),
        (f"{HEADER}\n{ROW}\np1,classification,gpt-4o,0,9,5,1,0.1\n", 3, "row", "8 values"),
        (f"{HEADER}\n{ROW}\n{ROW}\n", 3, "model", "first is on line 2"),
        (f"{HEADER}\n{ROW}\np1,reasoning,gpt-4o,0.9,5,1,0.1\n", 3, "task_type", "line 2"),
        (f"{HEADER}\n{ROW}\np1,not a task!,gpt-4o,0.9,5,1,0.1\n", 3, "task_type", "custom slug"),
    ],
)
def test_malformed_csv_names_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, says: str
) -> None:
    err = bad(tmp_path, text)
    assert (err.line, err.field) == (line, field), str(err)
    assert says in str(err), str(err)


def test_line_numbers_count_blank_lines_and_quoted_newlines(tmp_path: Path) -> None:
    text = f'{HEADER}\n\n"p\n1",classification,gpt-4o-mini,0.9,1,1,0.1\n\n{ROW2}\np2,x,a,7,1,1,1\n'
    err = bad(tmp_path, text)
    assert (err.line, err.field) == (7, "quality")


def test_malformed_jsonl_names_line_and_field(tmp_path: Path) -> None:
    good = {
        "prompt_id": "p1",
        "task_type": "qa-simple",
        "model": "gpt-4o",
        "quality": 0.9,
        "input_tokens": 5,
        "output_tokens": 5,
    }
    rows = [json.dumps(good), json.dumps({**good, "model": "gpt-4o-mini"})]
    cases = [
        ("", 1, "rows"),
        ("\n".join([*rows, "", "{not json"]), 4, "json"),
        ("\n".join([*rows, "[1, 2]"]), 3, "row"),
        (
            "\n".join([*rows, json.dumps({k: v for k, v in good.items() if k != "quality"})]),
            3,
            "quality",
        ),
        ("\n".join([*rows, json.dumps({**good, "prompt_id": "p2", "quality": 2})]), 3, "quality"),
        (
            "\n".join([*rows, json.dumps({**good, "prompt_id": "p2", "quality": None})]),
            3,
            "quality",
        ),
        (
            "\n".join([*rows, json.dumps({**good, "prompt_id": "p2", "input_tokens": True})]),
            3,
            "input_tokens",
        ),
        ("\n".join([*rows, json.dumps({**good, "prompt_id": "p2"})]), 3, "prompt_id"),
    ]
    for text, line, field in cases:
        err = bad(tmp_path, text, "evals.jsonl")
        assert (err.line, err.field) == (line, field), str(err)


def test_errors_are_value_errors_that_pickle(tmp_path: Path) -> None:
    err = bad(tmp_path, f"{HEADER}\n{ROW}\np1,classification,gpt-4o,7,1,1,0.1\n")
    assert isinstance(err, InvalidFieldError) and isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.line == 3 and back.field == "quality"
    with pytest.raises(InvalidFieldError) as e:
        load_table(write(tmp_path, TINY, "evals.tsv"))
    assert e.value.field == "format" and "--format" in str(e.value)


# -- the shipped example ----------------------------------------------------------


def test_example_ships_in_the_package() -> None:
    res = resources.files("tally_core.eval").joinpath("scenarios", "replay-example.csv")
    assert res.is_file()
    assert example_path().stat().st_size < 300_000
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert '"eval/scenarios/*.csv"' in pyproject.read_text(encoding="utf-8")
    t = load_table("replay-example")  # by name, as after an install
    assert len(t.prompts) == 300 and t.rows == 300 * 6
    assert t.best_model() == "o1" and t.models[0] == "gemini-2.5-flash-lite"


def test_tally_saves_money_on_the_example_and_keeps_the_floor() -> None:
    # Measured (seed 1, 3000 calls, shuffled): cost 0.093 of always-best, 1.008 of
    # the oracle's savings, 3.6% violations (learning the small, hard task types:
    # a few hundred calls each).
    r = replay(
        "replay-example",
        floor=SCENARIO_FLOORS,
        calls=3000,
        shuffle=True,
        seed=1,
        routers=("tally", "always-cheapest", "thompson"),
    )
    rt = r["routers"]
    tally, oracle = rt["tally"], rt["oracle"]
    assert tally["cost_vs_best"] < 0.3
    assert tally["oracle_savings_share"] > 0.8
    assert tally["violation_rate"] < 0.04
    assert tally["mean_quality"] > 0.9 * rt["always-best"]["mean_quality"]
    assert max(tally["calibration_calls"].values()) <= 45, tally["calibration_calls"]
    # Every post-warm-up violation is charged to the phase that made it, and
    # none of those phases is the fallback here (it clears every floor).
    by_phase = tally["violations_by_phase"]
    assert sum(by_phase.values()) == tally["violations_after_warmup"]
    assert tally["violations"] >= tally["violations_after_warmup"] > 0
    assert set(by_phase) <= {"explore", "exploit", "calibrate"}, by_phase
    # Learning calls on cheap models below the floor can take Tally a little
    # under the oracle's cost, never far.
    assert oracle["violation_rate"] == 0.0 and tally["oracle_savings_share"] < 1.05
    assert rt["always-cheapest"]["violation_rate"] > 0.2
    assert rt["thompson"]["cost_usd"] > 2 * tally["cost_usd"]
    # Same seed, same figures.
    again = replay(
        "replay-example",
        floor=SCENARIO_FLOORS,
        calls=3000,
        shuffle=True,
        seed=1,
        routers=("tally",),
    )
    assert again["routers"]["tally"]["cost_usd"] == tally["cost_usd"]


def test_generator_rebuilds_the_shipped_example(tmp_path: Path) -> None:
    import importlib.util

    tool = Path(__file__).resolve().parents[2] / "tools" / "make_replay_example.py"
    spec = importlib.util.spec_from_file_location("make_replay_example", tool)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.make("seed-landscape", 300, 1, 0.5)
    with example_path().open(encoding="utf-8", newline="") as f:
        shipped = list(csv.reader(f))
    assert shipped[0] == mod.COLUMNS
    # cost_usd (the last column) is the catalog price when the file was made,
    # which a newer price map may change; everything else is the seed's.
    assert [r[:-1] for r in shipped[1:]] == [r[:-1] for r in rows]


# -- the command ----------------------------------------------------------------


def test_bench_replay_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code = bench.main(
        [
            "replay",
            str(write(tmp_path, TINY)),
            "--floor",
            "0.8",
            "--routers",
            "always-cheapest, threshold",
            "--calls",
            "10",
            "--orders",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert text.startswith("replay evals.csv (5 prompts x 3 models), seed 1, 10 calls, floor 0.8")
    assert "always-cheapest" in text and "threshold" in text
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["source"] == "replay"
    assert saved["routers"]["oracle"]["cost_usd"] == pytest.approx(2 * 0.062)
    assert bench.format_table(saved).splitlines()[0] == text.splitlines()[0]


def test_bench_replay_reports_a_distribution_over_orders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.json"
    argv = ["replay", str(write(tmp_path, TINY)), "--routers", "tally", "--shuffle"]
    code = bench.main([*argv, "--calls", "40", "--orders", "3", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "3 orders (seeds 1-3)" in text.splitlines()[0]
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["seeds"] == [1, 2, 3]
    tally = saved["routers"]["tally"]
    shares = sorted(s["share"] for s in tally["per_seed"])
    assert tally["share"]["mean"] == pytest.approx(sum(shares) / 3)
    assert shares[0] <= tally["share"]["p10"] <= tally["share"]["p90"] <= shares[-1]
    # The oracle is the yardstick: its share is 1 on every order.
    assert saved["routers"]["oracle"]["share"]["p10"] == pytest.approx(1.0)
    assert bench.main([*argv, "--orders", "0"]) == 2


def test_bench_replay_command_reports_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, f"{HEADER}\n{ROW}\np1,classification,gpt-4o,1.5,1,1,0.1\n")
    assert bench.main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 3: quality: must be between 0 and 1" in err
    assert bench.main(["replay", str(tmp_path / "missing.csv")]) == 2
