"""Hourly roll-ups of the call log, kept on append, for reports that do not scan rows.

Two tables, one row per hour and group, summed as calls are appended (only
for the rows actually inserted, so a replayed batch never counts twice) and
adjusted when late feedback changes a call's quality:

- ``rollup_hour`` (hour x org x task type x model): what ``report`` shows:
  calls, tokens, cost, errors, quality sums, the first and last call's time
  and a latency sketch: ``lat_n`` calls with a latency, their min and max,
  and ``l0 .. l79`` the calls whose latency is at least ``2**(k/4)`` ms
  (cumulative log-scale buckets 19% wide, up to 14 minutes), from which
  percentiles are read (``percentile``) to within a bucket.
- ``rollup_detail`` (the same, also by holdout and quality floor): what
  ``savings`` and the inferred task mix need: the calls whose task type was
  inferred, token sums of the calls that have both counts (priced at the
  fallback's price in force), the cost of those that do not, quality
  moments, and the latest price recorded on a call of the group.

The SQL is written once here for both engines (``dialect`` "sqlite" or
"postgres"); ``source`` is a table expression with the calls' columns and
``seq`` (insertion order) naming the calls to add.

>>> lat = [500.0, 900.0, 2000.0]
>>> cum = [sum(x >= b for x in lat) for b in BOUNDS]
>>> round(percentile(cum, 3, 500.0, 2000.0, 50))  # exact: 900; within 19%
939
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tally_core.ledger.query import HOUR

__all__ = [
    "BOUNDS",
    "DETAIL",
    "DETAIL_KEY",
    "FEEDBACK_COLS",
    "HOUR",
    "HOUR_KEY",
    "REPORT",
    "ddl",
    "detail_insert",
    "feedback_deltas",
    "feedback_updates",
    "hour_insert",
    "inferred_task",
    "percentile",
    "source_ctes",
]

#: Latency bucket bounds (ms): bucket k counts calls with latency >= BOUNDS[k].
BOUNDS: tuple[float, ...] = tuple(2.0 ** (k / 4) for k in range(80))
_L = tuple(f"l{k}" for k in range(len(BOUNDS)))

HOUR_KEY = ("hour", "org", "task_type", "model")
DETAIL_KEY = ("hour", "org", "task_type", "model", "holdout", "qfloor")
# Summed columns of rollup_hour (name, type, SQL over the source ``s``).
_HOUR_SUMS: tuple[tuple[str, str, str], ...] = (
    ("calls", "INTEGER", "COUNT(*)"),
    ("input_tokens", "INTEGER", "SUM(COALESCE(input_tokens, 0))"),
    ("output_tokens", "INTEGER", "SUM(COALESCE(output_tokens, 0))"),
    ("cost_usd", "REAL", "SUM(COALESCE(cost_usd, 0.0))"),
    ("errors", "INTEGER", "SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END)"),
    ("quality_obs", "INTEGER", "COUNT(quality)"),
    ("quality_sum", "REAL", "SUM(COALESCE(quality, 0.0))"),
    ("lat_n", "INTEGER", "COUNT(latency_ms)"),
    *(
        (name, "INTEGER", f"SUM(CASE WHEN latency_ms >= {b!r} THEN 1 ELSE 0 END)")
        for name, b in zip(_L, BOUNDS, strict=True)
    ),
)
_HOUR_MINMAX = (("first_ts", "REAL", "MIN(ts)", "min"), ("last_ts", "REAL", "MAX(ts)", "max"),
                ("lat_min", "REAL", "MIN(latency_ms)", "min"),
                ("lat_max", "REAL", "MAX(latency_ms)", "max"))
_TOKENS = "input_tokens IS NOT NULL AND output_tokens IS NOT NULL"
_PRICED = "input_cost_per_mtok IS NOT NULL AND output_cost_per_mtok IS NOT NULL"
_DETAIL_SUMS: tuple[tuple[str, str, str], ...] = (
    ("calls", "INTEGER", "COUNT(*)"),
    ("inferred_calls", "INTEGER", "SUM(tinf)"),
    ("cost_usd", "REAL", "SUM(COALESCE(cost_usd, 0.0))"),
    ("input_tokens", "INTEGER", "SUM(COALESCE(input_tokens, 0))"),
    ("output_tokens", "INTEGER", "SUM(COALESCE(output_tokens, 0))"),
    ("tok_calls", "INTEGER", f"SUM(CASE WHEN {_TOKENS} THEN 1 ELSE 0 END)"),
    ("tok_input", "INTEGER", f"SUM(CASE WHEN {_TOKENS} THEN input_tokens ELSE 0 END)"),
    ("tok_output", "INTEGER", f"SUM(CASE WHEN {_TOKENS} THEN output_tokens ELSE 0 END)"),
    ("untok_cost", "REAL", f"SUM(CASE WHEN {_TOKENS} THEN 0.0 ELSE COALESCE(cost_usd, 0.0) END)"),
    ("q_n", "INTEGER", "COUNT(quality)"),
    ("q_sum", "REAL", "SUM(COALESCE(quality, 0.0))"),
    ("q_ss", "REAL", "SUM(COALESCE(quality * quality, 0.0))"),
    ("q_graded", "INTEGER",
     "SUM(CASE WHEN quality IS NOT NULL AND quality <> 0.0 AND quality <> 1.0 THEN 1 ELSE 0 END)"),
)
_DETAIL_MINMAX = (
    ("price_max", "REAL", "MAX(input_cost_per_mtok + output_cost_per_mtok)", "max"),
)
#: rollup_hour's figures, in the order ``Ledger.report_rollup`` returns them.
REPORT: tuple[str, ...] = tuple(c for c, _, _ in _HOUR_SUMS) + tuple(c for c, *_ in _HOUR_MINMAX)
#: rollup_detail's figures (besides the latest price).
DETAIL: tuple[str, ...] = tuple(c for c, _, _ in _DETAIL_SUMS) + ("price_max",)

_TYPES = {"sqlite": {"REAL": "REAL", "INTEGER": "INTEGER", "TEXT": "TEXT"},
          "postgres": {"REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT", "TEXT": "TEXT"}}


def _hour_expr(dialect: str) -> str:
    if dialect == "postgres":
        return "(floor(ts / 3600.0::float8) * 3600)::bigint"
    # floor() without SQLite's optional math functions: CAST truncates toward zero.
    x = "(ts / 3600.0)"
    return f"((CAST({x} AS INTEGER) - ({x} < CAST({x} AS INTEGER))) * 3600)"


def ddl(dialect: str) -> list[str]:
    """CREATE statements for the two roll-up tables and their indexes."""
    t = _TYPES[dialect]
    hour_cols = [
        "hour INTEGER NOT NULL", "org TEXT NOT NULL", "task_type TEXT NOT NULL",
        "model TEXT NOT NULL",
        *(f"{c} {t[ty]} NOT NULL DEFAULT 0" for c, ty, _ in _HOUR_SUMS),
        *(f"{c} {t[ty]}" for c, ty, *_ in _HOUR_MINMAX),
    ]
    detail_cols = [
        "hour INTEGER NOT NULL", "org TEXT NOT NULL", "task_type TEXT NOT NULL",
        "model TEXT NOT NULL", "holdout INTEGER NOT NULL", f"qfloor {t['REAL']} NOT NULL",
        *(f"{c} {t[ty]} NOT NULL DEFAULT 0" for c, ty, _ in _DETAIL_SUMS),
        *(f"{c} {t[ty]}" for c, ty, *_ in _DETAIL_MINMAX),
        f"price_ts {t['REAL']}", f"price_in {t['REAL']}", f"price_out {t['REAL']}",
    ]
    big = "BIGINT" if dialect == "postgres" else "INTEGER"
    hour_cols[0] = f"hour {big} NOT NULL"
    detail_cols[0] = f"hour {big} NOT NULL"
    return [
        f"CREATE TABLE IF NOT EXISTS rollup_hour ({', '.join(hour_cols)}, "
        f"PRIMARY KEY ({', '.join(HOUR_KEY)}))",
        f"CREATE TABLE IF NOT EXISTS rollup_detail ({', '.join(detail_cols)}, "
        f"PRIMARY KEY ({', '.join(DETAIL_KEY)}))",
    ]


def inferred_task(dialect: str) -> str:
    """SQL true when a call's task type was inferred (``%%`` in a LIKE
    pattern matches as ``%`` does, and survives psycopg's placeholders)."""
    pct = "%%" if dialect == "postgres" else "%"
    return f"(',' || COALESCE(inferred, '') || ',') LIKE '{pct},task_type,{pct}'"


def source_ctes(dialect: str, source: str) -> str:
    """``s`` (the calls to add, with their roll-up keys) and ``p`` (each
    detail group's latest priced call), as the body of a WITH clause."""
    inferred = inferred_task(dialect)
    s = (
        f"s AS (SELECT {_hour_expr(dialect)} AS hour, org, task_type, model, "
        "CASE WHEN holdout <> 0 THEN 1 ELSE 0 END AS holdout, "
        "COALESCE(quality_floor, -1.0) AS qfloor, "
        f"CASE WHEN {inferred} THEN 1 ELSE 0 END AS tinf, "
        "ts, seq, input_tokens, output_tokens, cost_usd, error, quality, latency_ms, "
        f"input_cost_per_mtok, output_cost_per_mtok FROM {source})"
    )
    keys = ", ".join(DETAIL_KEY)
    p = (
        f"p AS (SELECT {keys}, ts AS price_ts, input_cost_per_mtok AS price_in, "
        f"output_cost_per_mtok AS price_out FROM (SELECT {keys}, ts, input_cost_per_mtok, "
        f"output_cost_per_mtok, ROW_NUMBER() OVER (PARTITION BY {keys} "
        f"ORDER BY ts DESC, seq DESC) AS rn FROM s WHERE {_PRICED}) AS latest WHERE rn = 1)"
    )
    return f"{s}, {p}"


def _merge(dialect: str, table: str, col: str, how: str) -> str:
    old, new = f"{table}.{col}", f"excluded.{col}"
    if how == "sum":
        return f"{col} = {old} + {new}"
    if dialect == "postgres":  # LEAST and GREATEST skip NULLs
        fn = "LEAST" if how == "min" else "GREATEST"
        return f"{col} = {fn}({old}, {new})"
    fn = "min" if how == "min" else "max"
    return f"{col} = {fn}(COALESCE({old}, {new}), COALESCE({new}, {old}))"


def hour_insert(dialect: str) -> str:
    """INSERT ... SELECT ... ON CONFLICT adding ``s`` to rollup_hour (after WITH)."""
    cols = [*HOUR_KEY, *(c for c, _, _ in _HOUR_SUMS), *(c for c, *_ in _HOUR_MINMAX)]
    exprs = [*HOUR_KEY, *(e for _, _, e in _HOUR_SUMS), *(e for _, _, e, _ in _HOUR_MINMAX)]
    sets = [_merge(dialect, "rollup_hour", c, "sum") for c, _, _ in _HOUR_SUMS]
    sets += [_merge(dialect, "rollup_hour", c, how) for c, _, _, how in _HOUR_MINMAX]
    keys = ", ".join(HOUR_KEY)
    # ORDER BY the key: concurrent writers lock the rows they update in one order.
    return (
        f"INSERT INTO rollup_hour ({', '.join(cols)}) SELECT {', '.join(exprs)} FROM s "
        f"WHERE true GROUP BY {keys} ORDER BY {keys} "
        f"ON CONFLICT ({keys}) DO UPDATE SET {', '.join(sets)}"
    )


def detail_insert(dialect: str) -> str:
    """INSERT ... SELECT ... ON CONFLICT adding ``s`` to rollup_detail (after WITH)."""
    keys = ", ".join(DETAIL_KEY)
    skeys = ", ".join(f"s.{k}" for k in DETAIL_KEY)
    cols = [*DETAIL_KEY, *(c for c, _, _ in _DETAIL_SUMS), *(c for c, *_ in _DETAIL_MINMAX),
            "price_ts", "price_in", "price_out"]
    exprs = [skeys, *(e for _, _, e in _DETAIL_SUMS), *(e for _, _, e, _ in _DETAIL_MINMAX),
             "MAX(p.price_ts)", "MAX(p.price_in)", "MAX(p.price_out)"]
    sets = [_merge(dialect, "rollup_detail", c, "sum") for c, _, _ in _DETAIL_SUMS]
    sets += [_merge(dialect, "rollup_detail", c, how) for c, _, _, how in _DETAIL_MINMAX]
    # The latest priced call wins (a later batch wins a tie: it was appended later).
    newer = ("excluded.price_ts IS NOT NULL AND (rollup_detail.price_ts IS NULL OR "
             "excluded.price_ts >= rollup_detail.price_ts)")
    for c in ("price_in", "price_out", "price_ts"):
        sets.append(f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE rollup_detail.{c} END")
    on = " AND ".join(f"p.{k} = s.{k}" for k in DETAIL_KEY)
    return (
        f"INSERT INTO rollup_detail ({', '.join(cols)}) SELECT {', '.join(exprs)} "
        f"FROM s LEFT JOIN p ON {on} WHERE true GROUP BY {skeys} ORDER BY {skeys} "
        f"ON CONFLICT ({keys}) DO UPDATE SET {', '.join(sets)}"
    )


def feedback_deltas(old: float | None, new: float) -> tuple[int, float, float, int]:
    """(obs, sum, sum of squares, graded) to add when a call's quality goes
    from ``old`` to ``new``.

    >>> feedback_deltas(None, 0.5), feedback_deltas(1.0, 0.0)
    ((1, 0.5, 0.25, 1), (0, -1.0, -1.0, 0))
    """
    graded = int(new not in (0.0, 1.0))
    if old is None:
        return 1, new, new * new, graded
    return 0, new - old, new * new - old * old, graded - int(old not in (0.0, 1.0))


#: The columns of a call ``feedback_updates`` needs, in its order.
FEEDBACK_COLS = ("ts", "org", "task_type", "model", "holdout", "quality_floor", "inferred",
                 "quality")


def feedback_updates(
    mark: str, row: Sequence[Any], new: float
) -> list[tuple[str, tuple[Any, ...]]]:
    """UPDATE statements (and arguments) that move a call's quality from its
    value in ``row`` (``FEEDBACK_COLS``) to ``new`` in both roll-ups."""
    ts, org, tt, model, holdout, floor, inferred, old = row
    hour = math.floor(float(ts) / HOUR) * HOUR
    dn, ds, dss, dg = feedback_deltas(old, new)
    hk = " AND ".join(f"{k} = {mark}" for k in HOUR_KEY)
    dk = " AND ".join(f"{k} = {mark}" for k in DETAIL_KEY)
    return [
        (
            f"UPDATE rollup_hour SET quality_obs = quality_obs + {mark}, "
            f"quality_sum = quality_sum + {mark} WHERE {hk}",
            (dn, ds, hour, org, tt, model),
        ),
        (
            f"UPDATE rollup_detail SET q_n = q_n + {mark}, q_sum = q_sum + {mark}, "
            f"q_ss = q_ss + {mark}, q_graded = q_graded + {mark} WHERE {dk}",
            (dn, ds, dss, dg, hour, org, tt, model, int(bool(holdout)),
             -1.0 if floor is None else float(floor)),
        ),
    ]


def percentile(
    cum: Sequence[float], n: int, lo: float | None, hi: float | None, q: float
) -> float | None:
    """The ``q``-th percentile (0-100, linear between order statistics as
    ``numpy.percentile``) of ``n`` latencies from their sketch: ``cum[k]``
    of them are at least ``BOUNDS[k]`` ms, ``lo`` and ``hi`` the least and
    the greatest. Within a bucket the values are taken as evenly spread on
    a log scale, so the answer is within the bucket's 19% of the exact one.
    """
    if n <= 0 or lo is None or hi is None:
        return None
    r = q / 100.0 * (n - 1)
    i = math.floor(r)
    a = _order_stat(cum, n, lo, hi, i)
    if r == i or i + 1 >= n:
        return a
    return a + (r - i) * (_order_stat(cum, n, lo, hi, i + 1) - a)


def _order_stat(cum: Sequence[float], n: int, lo: float, hi: float, i: int) -> float:
    if i <= 0:
        return lo
    if i >= n - 1:
        return hi
    before = 0.0
    edges = (0.0, *BOUNDS, math.inf)
    counts = [n - cum[0], *(cum[k] - cum[k + 1] for k in range(len(cum) - 1)), cum[-1]]
    for j, m in enumerate(counts):
        if m > 0 and i < before + m:
            a, b = max(edges[j], lo), min(edges[j + 1], hi)
            t = (i - before + 0.5) / m
            if a <= 0.0 or b <= a:
                return a + t * (b - a)
            return float(a * (b / a) ** t)
        before += m
    return hi
