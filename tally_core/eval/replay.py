"""Replay a logged evaluation table through Tally and the simulator's baselines.

Many teams have evaluation runs where several models answered the same
prompts and were graded. ``replay`` turns such a table into a stream of calls,
one per prompt: each router chooses a model for the prompt and then learns
only the logged outcome of *that* model, while the oracle knows every row.
The figures are the simulator's (``tally_core.eval.sim.run_comparison``), so
``tally_core.eval.bench.format_table`` prints them.

The table is CSV (a header row, then one row per line) or JSONL (one JSON
object per line), one row per (prompt, model):

=================  ========  ==================================================
column             needed    value
=================  ========  ==================================================
``prompt_id``      yes       any text; the rows of one prompt share it
``task_type``      yes       a task type (``summarization`` -> ``summarisation``)
``model``          yes       the model's name (LiteLLM's naming for priced ones)
``quality``        yes       a grade from 0 to 1, or ``true``/``false`` (1/0)
``input_tokens``   yes       a whole number >= 0
``output_tokens``  yes       a whole number >= 0
``latency_ms``     no        >= 0; passed to the routers with the outcome
``cost_usd``       no        >= 0; the call's price. Without it, the catalog
                             price (``tally_core.catalog``) times the tokens;
                             a model that is not in the price map needs it.
=================  ========  ==================================================

Other columns are ignored (never store prompt text in them: Tally does not
read it). Every prompt needs rows from at least two models. A malformed file
raises ``ReplayFileError`` naming the file, the line and the field.

How the figures are defined on a replay:

- **true quality** of a model on a task type is its mean logged quality over
  the file's prompts of that task type (what a large enough run would tell).
  A **floor violation** is a call routed to a model whose true quality for
  the task type is below the bar, as in the simulator: the bar is the task
  type's floor or, with no floor, parity (the best true quality among the
  prompt's models minus ``parity_tolerance``).
- **quality** (``mean_quality``) is the logged quality of the rows the router
  chose: what the team would have got on these prompts.
- **cost** is the chosen row's ``cost_usd``, else its catalog price.
- the **oracle** knows the true qualities and every row's cost: per prompt,
  the cheapest of the prompt's models whose true quality clears the bar (when
  none does, the best). It never violates the floor. The optional
  ``hindsight`` router also knows each prompt's grades: the cheapest model
  whose logged grade *for this prompt* clears the bar -- a bound no router
  that does not see the answer can reach; it is judged by the same rule.
- **always-best** is the model with the best mean logged quality over the
  file (``best=`` to pick another); it is Tally's fallback too.
- floors: ``floor=0.8`` (the default) for every task type; a mapping gives
  one per task type (``"*"`` for the rest); ``None`` is parity, which is what
  Tally does for an envelope without ``quality_floor`` -- but on a replay the
  bar is then a point estimate from the file, so with a few dozen prompts per
  task type, sampling noise decides which models are "at parity"; give
  floors when you can.
- violations count from each task type's first call (``warmup=0``), so a
  learning router's calibration is charged too.

Prompts run in file order, or shuffled with ``seed`` (``shuffle=True``);
``calls`` above the number of prompts cycles through the file again
(reshuffled each pass when shuffling).

>>> rows = '''prompt_id,task_type,model,quality,input_tokens,output_tokens,cost_usd
... p1,classification,small,0.9,500,20,0.001
... p1,classification,large,1.0,500,20,0.010
... p2,classification,small,0.7,400,20,0.001
... p2,classification,large,0.9,400,20,0.010'''
>>> table = read_table(rows.splitlines(), "csv")
>>> table.truth()["classification"]
{'small': 0.8, 'large': 0.95}
>>> r = replay(table, floor=0.75, routers=("always-cheapest",))
>>> r["routers"]["oracle"]["cost_usd"], r["routers"]["always-best"]["cost_usd"]
(0.002, 0.02)
>>> read_table(rows.replace("0.7,", "1.5,").splitlines(), "csv", name="evals.csv")
Traceback (most recent call last):
...
tally_core.eval.replay.ReplayFileError: evals.csv, line 4: quality: must be between 0 and 1 ...
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tally_core.catalog import Catalog, ModelSpec
from tally_core.envelope import normalise_task_type
from tally_core.errors import InvalidFieldError, UnknownModelError
from tally_core.eval.difficulty import floor_difficulty
from tally_core.eval.sim import (
    ROUTER_NAMES,
    OracleRouter,
    RouterFactory,
    Scenario,
    SimResult,
    SimRouter,
    TaskSpec,
    _bar,
    _Recorder,
    _summarize,
    baseline_routers,
)

__all__ = [
    "OPTIONAL_COLUMNS",
    "DEFAULT_FLOOR",
    "REQUIRED_COLUMNS",
    "EvalTable",
    "Outcome",
    "PromptRows",
    "ReplayFileError",
    "example_path",
    "load_table",
    "parse_floor",
    "read_table",
    "replay",
]

REQUIRED_COLUMNS = ("prompt_id", "task_type", "model", "quality", "input_tokens", "output_tokens")
OPTIONAL_COLUMNS = ("latency_ms", "cost_usd")
#: The quality floor of every task type unless told otherwise.
DEFAULT_FLOOR = 0.8
#: Routers only a replay has (see the module docstring).
REPLAY_ROUTERS = ("hindsight",)
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ReplayFileError(InvalidFieldError):
    """A replay file is malformed: ``path``, ``line`` (1-based) and ``field``
    say where, the message says what to change.

    >>> str(ReplayFileError("evals.csv", 7, "quality", "must be between 0 and 1, got 1.5"))
    'evals.csv, line 7: quality: must be between 0 and 1, got 1.5'
    """

    def __init__(self, path: str, line: int, field: str, message: str) -> None:
        super().__init__(field, message)
        self.args = (path, line, field, message)  # all args, so it unpickles
        self.path, self.line = path, line

    def __str__(self) -> str:
        path, line, field, message = self.args
        return f"{path}, line {line}: {field}: {message}"


@dataclass(frozen=True)
class Outcome:
    """One graded answer: a row of the table, with its cost resolved."""

    prompt_id: str
    task_type: str
    model: str
    quality: float
    input_tokens: int
    output_tokens: int
    latency_ms: float | None
    cost_usd: float
    line: int


@dataclass
class PromptRows:
    """One prompt: its task type and each model's outcome on it."""

    prompt_id: str
    task_type: str
    line: int  # where its first row is
    rows: dict[str, Outcome] = field(default_factory=dict)


@dataclass
class EvalTable:
    """A validated evaluation table, grouped by prompt (in file order).

    ``models`` is ordered cheapest first (mean cost of a row); ``specs`` has
    a complete ``ModelSpec`` per model: the catalog's, or for a model not in
    the price map, one priced at its logged cost per token (input and output
    alike), which is what the routers rank it by.
    """

    name: str
    prompts: list[PromptRows]
    models: list[str]
    specs: dict[str, ModelSpec]
    rows: int

    @property
    def task_types(self) -> dict[str, int]:
        """Prompts per task type, in order of first appearance."""
        out: dict[str, int] = {}
        for p in self.prompts:
            out[p.task_type] = out.get(p.task_type, 0) + 1
        return out

    def outcomes(self) -> Iterator[Outcome]:
        for p in self.prompts:
            yield from p.rows.values()

    def truth(self) -> dict[str, dict[str, float]]:
        """Per task type, each model's mean logged quality (the replay's truth)."""
        sums: dict[str, dict[str, list[float]]] = {}
        for o in self.outcomes():
            s = sums.setdefault(o.task_type, {}).setdefault(o.model, [0.0, 0.0])
            s[0] += o.quality
            s[1] += 1.0
        return {
            t: {m: per[m][0] / per[m][1] for m in self.models if m in per}
            for t, per in sums.items()
        }

    def best_model(self) -> str:
        """The model with the best mean logged quality (the dearer on a tie)."""
        sums: dict[str, list[float]] = {m: [0.0, 0.0] for m in self.models}
        for o in self.outcomes():
            sums[o.model][0] += o.quality
            sums[o.model][1] += 1.0
        rank = {m: i for i, m in enumerate(self.models)}
        return max(self.models, key=lambda m: (sums[m][0] / sums[m][1], rank[m]))

    def scenario(
        self,
        floors: Mapping[str, float | None],
        best: str | None = None,
        warmup: int = 0,
        parity_tolerance: float = 0.02,
    ) -> Scenario:
        """The table as a ``Scenario``, so the simulator's routers can be built
        for it: task shares, floors, true qualities and typical token counts
        from the file; the best model as the fallback."""
        truth = self.truth()
        n = len(self.prompts)
        stats: dict[str, list[float]] = {}
        lat: dict[str, list[float]] = {}
        bools: dict[str, bool] = {}
        for o in self.outcomes():
            s = stats.setdefault(o.task_type, [0.0, 0.0, 0.0])
            s[0] += o.input_tokens
            s[1] += o.output_tokens
            s[2] += 1.0
            bools[o.task_type] = bools.get(o.task_type, True) and o.quality in (0.0, 1.0)
            if o.latency_ms is not None:
                la = lat.setdefault(o.model, [0.0, 0.0])
                la[0] += o.latency_ms
                la[1] += 1.0
        tasks = {
            t: TaskSpec(
                name=t,
                share=k / n,
                floor=floors.get(t),
                quality=truth[t],
                outcome="bernoulli" if bools[t] else "beta",
                input_tokens=max(1, round(stats[t][0] / stats[t][2])),
                output_tokens=max(1, round(stats[t][1] / stats[t][2])),
            )
            for t, k in self.task_types.items()
        }
        models: list[str | dict[str, Any]] = [
            m
            if self.specs[m].source != "replay"
            else self.specs[m].model_dump(exclude_none=True, exclude={"source"})
            for m in self.models
        ]
        return Scenario(
            name=self.name,
            models=models,
            fallback=best or self.best_model(),
            tasks=tasks,
            calls=n,
            latency_ms={m: s / k for m, (s, k) in lat.items()},
            warmup=warmup,
            parity_tolerance=parity_tolerance,
            description=f"replay of {self.name}",
        )


# -- reading -----------------------------------------------------------------


def example_path() -> Path:
    """The example table shipped with Tally (``replay-example.csv``): 300
    prompts of the ``seed-landscape`` scenario, each answered by its six
    models (made by ``tools/make_replay_example.py``)."""
    return Path(str(resources.files("tally_core.eval").joinpath("scenarios", "replay-example.csv")))


def load_table(path: str | Path, file_format: str | None = None) -> EvalTable:
    """Read and validate a CSV or JSONL evaluation table.

    ``file_format`` is ``"csv"`` or ``"jsonl"``; by default the extension
    decides (``.csv``; ``.jsonl`` or ``.ndjson``). A name that is not a file
    but a table shipped with Tally (``replay-example``) loads that one.
    """
    p = Path(path)
    if not p.exists() and str(path).removesuffix(".csv") == "replay-example":
        p = example_path()
    fmt = file_format or _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InvalidFieldError(
            "format",
            f"cannot tell the format of {str(p)!r} from its extension: name it .csv or .jsonl, "
            "or pass the format (--format csv|jsonl)",
        )
    with p.open(encoding="utf-8-sig", newline="") as f:
        return read_table(f, fmt, name=str(p))


def read_table(lines: Iterable[str], file_format: str, name: str = "<table>") -> EvalTable:
    """Validate the lines of a table (``"csv"`` or ``"jsonl"``); ``name`` is
    what error messages call the file."""
    if file_format == "csv":
        records = _csv_records(lines, name)
    elif file_format == "jsonl":
        records = _jsonl_records(lines, name)
    else:
        raise InvalidFieldError("format", f"must be 'csv' or 'jsonl', got {file_format!r}")
    return _build(records, name, file_format)


def _csv_records(lines: Iterable[str], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(lines)
    header: list[str] | None = None
    header_line = 0
    end = 0  # the line the previous record ended on
    for rec in reader:
        start, end = end + 1, reader.line_num
        if not rec or all(not c.strip() for c in rec):
            continue
        if header is None:
            header = [c.strip().lstrip("\ufeff").lower() for c in rec]
            header_line = start
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ReplayFileError(
                    name,
                    start,
                    missing[0],
                    f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                    f"the header row names {', '.join(header) or 'nothing'}; it needs "
                    f"{', '.join(REQUIRED_COLUMNS)} (and optionally "
                    f"{', '.join(OPTIONAL_COLUMNS)})",
                )
            continue
        if len(rec) < len(header):
            col = header[len(rec)]
            raise ReplayFileError(
                name,
                start,
                col,
                f"no value: the row has {len(rec)} values, the header (line {header_line}) "
                f"names {len(header)} columns",
            )
        if len(rec) > len(header):
            raise ReplayFileError(
                name,
                start,
                "row",
                f"has {len(rec)} values, the header (line {header_line}) names {len(header)} "
                "columns (is there an unquoted comma in a value?)",
            )
        data: dict[str, Any] = {}
        for col, value in zip(header, rec, strict=True):
            data.setdefault(col, value)
        yield start, data
    if header is None:
        raise ReplayFileError(
            name,
            1,
            "header",
            "the file is empty: its first line must be a header row naming the columns "
            f"{', '.join(REQUIRED_COLUMNS)}",
        )


def _jsonl_records(lines: Iterable[str], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, raw in enumerate(lines, 1):
        text = raw.strip().lstrip("\ufeff")
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReplayFileError(
                name, lineno, "json", f"not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise ReplayFileError(
                name, lineno, "row", f"must be a JSON object, got {type(obj).__name__}"
            )
        yield lineno, {str(k).strip().lower(): v for k, v in obj.items()}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _quality(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        x = float(value)
    else:
        s = str(value).strip().lower()
        if s == "true":
            return 1.0
        if s == "false":
            return 0.0
        try:
            x = float(s)
        except ValueError:
            raise ValueError(
                f"must be a number between 0 and 1, or true/false, got {value!r}"
            ) from None
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(f"must be between 0 and 1 (or true/false), got {value!r}")
    return x


def _tokens(value: Any) -> int:
    err = f"must be a whole number of tokens >= 0, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(err)
    if isinstance(value, int):
        n = value
    else:
        try:
            x = float(str(value).strip())
        except ValueError:
            raise ValueError(err) from None
        if not math.isfinite(x) or x != int(x):
            raise ValueError(err)
        n = int(x)
    if n < 0:
        raise ValueError(err)
    return n


def _amount(value: Any, unit: str) -> float:
    err = f"must be a number >= 0 ({unit}) or empty, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(err)
    try:
        x = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
    except ValueError:
        raise ValueError(err) from None
    if not math.isfinite(x) or x < 0:
        raise ValueError(err)
    return x


def _price(model: str) -> ModelSpec | None:
    try:
        return Catalog([model])[model]
    except UnknownModelError:
        return None


def _build(records: Iterable[tuple[int, dict[str, Any]]], name: str, file_format: str) -> EvalTable:
    prompts: dict[str, PromptRows] = {}
    prices: dict[str, ModelSpec | None] = {}
    logged: dict[str, list[float]] = {}  # model -> [cost_usd, tokens] of rows priced in the file
    costs: dict[str, list[float]] = {}  # model -> [cost_usd, rows]
    n = 0
    for line, data in records:

        def fail(col: str, message: str, _line: int = line) -> ReplayFileError:
            return ReplayFileError(name, _line, col, message)

        for col in REQUIRED_COLUMNS:
            if col not in data:
                raise fail(
                    col,
                    f"missing: every row needs {', '.join(REQUIRED_COLUMNS)}",
                )
            if _missing(data[col]):
                raise fail(col, "is empty: every row needs a value here")
        pid = str(data["prompt_id"]).strip()
        model = str(data["model"]).strip()
        try:
            task = normalise_task_type(str(data["task_type"]))
        except ValueError as exc:
            raise fail("task_type", str(exc)) from None
        values: dict[str, Any] = {}
        for col, parse in (
            ("quality", _quality),
            ("input_tokens", _tokens),
            ("output_tokens", _tokens),
        ):
            try:
                values[col] = parse(data[col])
            except ValueError as exc:
                raise fail(col, str(exc)) from None
        for col, unit in (("latency_ms", "milliseconds"), ("cost_usd", "USD")):
            raw = data.get(col)
            try:
                values[col] = None if _missing(raw) else _amount(raw, unit)
            except ValueError as exc:
                raise fail(col, str(exc)) from None
        if model not in prices:
            try:
                prices[model] = _price(model)
            except InvalidFieldError as exc:
                raise fail("model", f"{exc.args[1]} ({model!r})") from None
        spec = prices[model]
        cost = values["cost_usd"]
        if cost is None:
            if spec is None:
                raise fail(
                    "cost_usd",
                    f"model {model!r} is not in the price map, so each of its rows needs "
                    "cost_usd (the call's price in USD)",
                )
            cost = spec.estimate_cost_usd(values["input_tokens"], values["output_tokens"])
        else:
            lg = logged.setdefault(model, [0.0, 0.0])
            lg[0] += cost
            lg[1] += values["input_tokens"] + values["output_tokens"]
        c = costs.setdefault(model, [0.0, 0.0])
        c[0] += cost
        c[1] += 1.0
        prompt = prompts.get(pid)
        if prompt is None:
            prompt = prompts[pid] = PromptRows(pid, task, line)
        elif prompt.task_type != task:
            raise fail(
                "task_type",
                f"{task!r}, but prompt {pid!r} is {prompt.task_type!r} on line {prompt.line}: "
                "all rows of one prompt need the same task type",
            )
        if model in prompt.rows:
            raise fail(
                "model",
                f"a second row for prompt {pid!r} and model {model!r} "
                f"(the first is on line {prompt.rows[model].line})",
            )
        prompt.rows[model] = Outcome(
            prompt_id=pid,
            task_type=task,
            model=model,
            quality=values["quality"],
            input_tokens=values["input_tokens"],
            output_tokens=values["output_tokens"],
            latency_ms=values["latency_ms"],
            cost_usd=cost,
            line=line,
        )
        n += 1
    if not prompts:
        if file_format == "csv":
            raise ReplayFileError(name, 2, "rows", "no rows after the header")
        raise ReplayFileError(
            name,
            1,
            "rows",
            "the file has no rows: expected one JSON object per line with "
            f"{', '.join(REQUIRED_COLUMNS)}",
        )
    for p in prompts.values():
        if len(p.rows) < 2:
            (only,) = p.rows
            raise ReplayFileError(
                name,
                p.line,
                "prompt_id",
                f"prompt {p.prompt_id!r} has a row for one model only ({only}); a replay needs "
                "each prompt answered by at least two models, so a router has a choice",
            )
    specs: dict[str, ModelSpec] = {}
    for m, spec in prices.items():
        if spec is None:
            total, tokens = logged[m]
            rate = total / tokens * 1e6 if tokens else 0.0
            spec = ModelSpec(
                name=m,
                input_cost_per_mtok=rate,
                output_cost_per_mtok=rate,
                supports_tools=False,
                source="replay",
            )
        specs[m] = spec
    models = sorted(prices, key=lambda m: (costs[m][0] / costs[m][1], m))
    for p in prompts.values():  # each prompt's rows cheapest model first
        p.rows = {m: p.rows[m] for m in models if m in p.rows}
    return EvalTable(
        name=Path(name).name, prompts=list(prompts.values()), models=models, specs=specs, rows=n
    )


# -- floors --------------------------------------------------------------------


def parse_floor(spec: str) -> float | dict[str, float | None] | None:
    """The ``--floor`` option: ``0.8`` (every task type), ``parity`` (or
    ``none``), or comma-separated ``task=value`` pairs (``task=parity`` too)
    where a bare value is the floor of the task types not named (else
    ``DEFAULT_FLOOR``).

    >>> parse_floor("0.8,reasoning=0.85")
    {'*': 0.8, 'reasoning': 0.85}
    >>> parse_floor("parity") is None
    True
    """

    def value(v: str) -> float | None:
        v = v.strip().lower()
        if v in ("none", "parity", ""):
            return None
        try:
            x = float(v)
        except ValueError:
            raise InvalidFieldError(
                "floor", f"{v!r} is not a number between 0 and 1 or 'parity'"
            ) from None
        if not math.isfinite(x) or not 0.0 <= x <= 1.0:
            raise InvalidFieldError("floor", f"must be between 0 and 1, got {v!r}")
        return x

    parts = [p for p in spec.split(",") if p.strip()]
    if not parts:
        return None
    if len(parts) == 1 and "=" not in parts[0]:
        return value(parts[0])
    out: dict[str, float | None] = {}
    for p in parts:
        if "=" in p:
            task, v = p.split("=", 1)
            out[task.strip()] = value(v)
        else:
            out["*"] = value(p)
    return out


def _floors(
    floor: float | Mapping[str, float | None] | str | None, tasks: Sequence[str]
) -> dict[str, float | None]:
    if isinstance(floor, str):
        floor = parse_floor(floor)
    if floor is None or isinstance(floor, (int, float)):
        if floor is not None and (isinstance(floor, bool) or not 0.0 <= floor <= 1.0):
            raise InvalidFieldError("floor", f"must be between 0 and 1, got {floor!r}")
        return {t: None if floor is None else float(floor) for t in tasks}
    out: dict[str, float | None] = {t: floor.get("*", DEFAULT_FLOOR) for t in tasks}
    for key, v in floor.items():
        if key == "*":
            continue
        try:
            t = normalise_task_type(key)
        except ValueError as exc:
            raise InvalidFieldError("floor", str(exc)) from None
        if t not in out:
            raise InvalidFieldError(
                "floor", f"no task type {key!r} in the file; it has {', '.join(tasks)}"
            )
        out[t] = v
    for t, v in out.items():
        if v is not None and not 0.0 <= v <= 1.0:
            raise InvalidFieldError("floor", f"{t}: must be between 0 and 1, got {v!r}")
    return out


# -- the replay ----------------------------------------------------------------


class _Current:
    """The prompt being routed: what the oracles may look at."""

    prompt: PromptRows


def _build_routers(
    sc: Scenario,
    table: EvalTable,
    current: _Current,
    names: Sequence[str],
    seed: int,
    tally_kwargs: Mapping[str, Any] | None,
    extra: Mapping[str, RouterFactory] | None,
) -> list[SimRouter]:
    def row_cost(t: TaskSpec, m: str) -> float:
        return current.prompt.rows[m].cost_usd

    out: list[SimRouter] = []
    for name in names:
        if name == "oracle":
            out.append(
                OracleRouter(
                    lambda t, m: t.quality[m], row_cost, sc.parity_tolerance, call_cost=True
                )
            )
        elif name == "hindsight":
            hs = OracleRouter(
                lambda t, m: current.prompt.rows[m].quality,
                row_cost,
                sc.parity_tolerance,
                call_cost=True,
            )
            hs.name = "hindsight"
            out.append(hs)
        else:
            out.extend(
                baseline_routers(
                    sc, seed=seed, names=[name], tally_kwargs=tally_kwargs, extra=extra
                )
            )
    return out


def _run(
    sc: Scenario,
    table: EvalTable,
    router: SimRouter,
    order: Sequence[int],
    current: _Current,
) -> SimResult:
    tasks = sc.tasks
    everyone = set(table.models)
    plans = []  # per prompt: its task, pool, envelope and bar, worked out once
    for p in table.prompts:
        task = tasks[p.task_type]
        pool = list(p.rows)
        env: dict[str, Any] = {"task_type": task.name, "quality_floor": task.floor}
        if set(pool) != everyone:
            env["allowed_models"] = tuple(pool)
        bar = _bar(task, {m: task.quality[m] for m in pool}, sc.parity_tolerance)
        plans.append((task, pool, env, bar))
    rec = _Recorder(table.models, list(tasks), sc.warmup)
    for i, k in enumerate(order):
        prompt = table.prompts[k]
        current.prompt = prompt
        task, pool, env, bar = plans[k]
        model = router.choose(task, dict(env), pool)
        row = prompt.rows.get(model)
        if row is None:
            raise InvalidFieldError(
                "routers",
                f"{router.name} chose {model!r} for prompt {prompt.prompt_id!r}, which has "
                f"rows for {', '.join(pool)} only",
            )
        latency = row.latency_ms if row.latency_ms is not None else sc.latency_ms.get(model, 1e3)
        router.observe(
            task,
            model,
            row.quality,
            False,
            row.input_tokens,
            row.output_tokens,
            latency,
            row.cost_usd,
        )
        rec.add(i, task.name, model, row.cost_usd, row.quality, task.quality[model], bar)
    return rec.result(router, sc)


def replay(
    source: str | Path | EvalTable,
    *,
    floor: float | Mapping[str, float | None] | str | None = DEFAULT_FLOOR,
    seed: int = 1,
    calls: int | None = None,
    shuffle: bool = False,
    warmup: int = 0,
    routers: Sequence[str] | None = None,
    best: str | None = None,
    parity_tolerance: float = 0.02,
    file_format: str | None = None,
    tally_kwargs: Mapping[str, Any] | None = None,
    extra: Mapping[str, RouterFactory] | None = None,
) -> dict[str, Any]:
    """Replay an evaluation table through the routers; every figure, per router.

    Parameters
    ----------
    source
        A CSV or JSONL path (see the module docstring), or a loaded ``EvalTable``.
    floor
        One floor for every task type (default ``DEFAULT_FLOOR``, 0.8), a
        mapping of task type to floor (``"*"``: the rest, else the default;
        ``None`` values mean parity), ``None`` for parity everywhere, or
        ``--floor`` text.
    seed
        Seeds every router and the shuffle.
    calls
        How many calls; default one per prompt. More cycles through the file.
    shuffle
        Route the prompts in a seeded random order (a new one each pass).
    warmup
        Calls per task type before violations count.
    routers
        Router names: ``sim.ROUTER_NAMES``, ``hindsight``, and any in
        ``extra`` (default: ``ROUTER_NAMES`` plus ``extra``'s).
        ``always-best`` and ``oracle`` always run.
    best
        The ``always-best`` model and Tally's fallback (default: the best
        mean logged quality).
    extra
        More router factories by name, e.g. ``tally_litellm.baseline.ROUTERS``.

    Returns ``sim.run_comparison``'s result (``scenario``, ``seed``, ``calls``,
    ``routers``) plus ``source: "replay"``, ``file``, ``prompts``, ``rows``,
    ``models``, ``task_types``, ``floors``, ``best``, ``warmup``, ``shuffle``
    and ``difficulty``: per task type with a floor, how many calls below it
    learning that floor takes whatever the policy
    (``tally_core.eval.difficulty``).
    """
    table = source if isinstance(source, EvalTable) else load_table(source, file_format)
    if calls is not None and (isinstance(calls, bool) or calls < 1):
        raise InvalidFieldError("calls", f"must be at least 1, got {calls!r}")
    if warmup < 0:
        raise InvalidFieldError("warmup", f"must be >= 0, got {warmup!r}")
    if best is not None and best not in table.models:
        raise InvalidFieldError(
            "best", f"{best!r} has no rows in the file; models: {', '.join(table.models)}"
        )
    floors = _floors(floor, list(table.task_types))
    sc = table.scenario(floors, best=best, warmup=warmup, parity_tolerance=parity_tolerance)
    names = list(routers if routers is not None else (*ROUTER_NAMES, *(extra or {})))
    known = [*ROUTER_NAMES, *REPLAY_ROUTERS, *(extra or {})]
    for name in names:
        if name not in known:
            raise InvalidFieldError("routers", f"unknown router {name!r}; known: {known}")
    for must in ("always-best", "oracle"):
        if must not in names:
            names.append(must)
    n = calls or len(table.prompts)
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < n:
        cycle = list(range(len(table.prompts)))
        if shuffle:
            rng.shuffle(cycle)
        order.extend(cycle)
    del order[n:]
    current = _Current()
    results: dict[str, SimResult] = {}
    wall: dict[str, float] = {}
    for router in _build_routers(sc, table, current, names, seed, tally_kwargs, extra):
        t0 = time.perf_counter()
        try:
            results[router.name] = _run(sc, table, router, order, current)
        finally:
            close = getattr(router, "close", None)
            if close is not None:
                close()
        wall[router.name] = time.perf_counter() - t0
    return {
        "source": "replay",
        "scenario": table.name,
        "file": table.name,
        "seed": seed,
        "calls": n,
        "prompts": len(table.prompts),
        "rows": table.rows,
        "models": table.models,
        "task_types": table.task_types,
        "floors": floors,
        "parity_tolerance": parity_tolerance,
        "best": sc.fallback,
        "warmup": warmup,
        "shuffle": shuffle,
        "difficulty": _difficulty(table, floors, sc.fallback, order),
        "routers": _summarize(results, names, wall),
    }


def _difficulty(
    table: EvalTable, floors: Mapping[str, float | None], fallback: str, order: Sequence[int]
) -> dict[str, dict[str, Any]]:
    calls: dict[str, int] = {}
    for i in order:
        t = table.prompts[i].task_type
        calls[t] = calls.get(t, 0) + 1
    return {
        t: d.to_dict() for t, d in floor_difficulty(table, floors, fallback, calls=calls).items()
    }
