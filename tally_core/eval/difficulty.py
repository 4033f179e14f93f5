"""How hard a set of floors is to learn, whatever the policy: a lower
estimate of the calls below the floor it takes to find the cheapest model
that clears each floor.

A floor is hard when a model the policy cannot rule out on price -- one no
dearer than the cheapest model that clears -- sits just below it. With no
prior on which of the two is which, a policy that tells them apart must
sample one of them until a sequential test decides, and half the time the
one it samples first is the rival: every such call is below the floor.
Wald's approximation of the average sample number of that test, at error
``error`` both ways, under the rival, is

    n = (1 - 2 error) ln((1 - error) / error) / KL(rival || target)

(1.76 / KL at 10%), where KL is the Kullback-Leibler divergence of one
outcome of the rival from one of the target (Bernoulli for 0/1 outcomes,
normal with the pooled variance for graded ones). The expected calls below
the floor are then about ``n / 2``. A task type whose cheapest clearing
model is also the cheapest candidate has no such rival: a policy that tries
the cheapest first learns it on calls that clear (0 here).

This is an estimate of what learning a floor must cost, not a bound on any
one stream: a lucky order costs less. It is what ``tally bench replay``
prints under "floor difficulty", and how BENCHMARKS.md tells a floor no
policy can learn within a rate from a policy that leaves savings behind.

>>> round(bernoulli_kl(0.770, 0.816), 5)
0.00665
>>> round(wald_calls(bernoulli_kl(0.770, 0.816)))
265
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tally_core.errors import InvalidFieldError

if TYPE_CHECKING:
    from tally_core.eval.replay import EvalTable

__all__ = ["TaskDifficulty", "bernoulli_kl", "floor_difficulty", "wald_calls"]


def bernoulli_kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)), with both clipped into (0, 1).

    >>> bernoulli_kl(0.5, 0.5)
    0.0
    """
    eps = 1e-9
    p = min(max(p, eps), 1 - eps)
    q = min(max(q, eps), 1 - eps)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def wald_calls(kl: float, error: float = 0.1) -> float:
    """Wald's average sample number of a sequential test between two
    outcome distributions ``kl`` apart, at ``error`` both ways (inf when
    they are the same)."""
    if not 0.0 < error < 0.5:
        raise InvalidFieldError("error", f"must be between 0 and 0.5 (exclusive), got {error!r}")
    if kl <= 0.0:
        return math.inf
    return (1 - 2 * error) * math.log((1 - error) / error) / kl


def _outcome_kl(rival: list[float], target: list[float], binary: bool) -> float:
    """KL of one outcome of the rival from one of the target, from their
    sums (quality, quality squared, cost, count)."""
    mr, mt = rival[0] / rival[3], target[0] / target[3]
    if binary:
        return bernoulli_kl(mr, mt)
    var = (rival[1] / rival[3] - mr * mr + target[1] / target[3] - mt * mt) / 2.0
    return (mr - mt) ** 2 / (2.0 * max(var, 1e-6))


@dataclass(frozen=True, slots=True)
class TaskDifficulty:
    """One task type's floor: the cheapest model that clears it (``target``:
    of those at its price, the easiest to tell from the rival), the hardest
    rival no dearer than it (None when there is none), the test's calls and
    the expected calls below the floor (half of them), also as a share of
    ``calls`` (the task type's calls in the run, when known)."""

    floor: float
    target: str | None
    target_quality: float | None
    rival: str | None
    rival_quality: float | None
    wald_calls: float
    expected_violations: float
    calls: int | None
    share_of_calls: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def floor_difficulty(
    table: EvalTable,
    floors: Mapping[str, float | None],
    fallback: str,
    *,
    calls: Mapping[str, int] | None = None,
    error: float = 0.1,
    min_saving: float = 0.10,
) -> dict[str, TaskDifficulty]:
    """Per task type with a floor, how hard it is to learn (see the module
    docstring). Candidates are the models at least ``min_saving`` cheaper
    per call than ``fallback`` on that task type (as Tally's policy);
    ``calls`` gives each task type's calls in the run, for the share."""
    sums: dict[tuple[str, str], list[float]] = {}
    for o in table.outcomes():
        s = sums.setdefault((o.task_type, o.model), [0.0, 0.0, 0.0, 0.0, 1.0])
        s[0] += o.quality
        s[1] += o.quality * o.quality
        s[2] += o.cost_usd
        s[3] += 1.0
        if o.quality not in (0.0, 1.0):
            s[4] = 0.0
    out: dict[str, TaskDifficulty] = {}
    for task in table.task_types:
        floor = floors.get(task)
        if floor is None:
            continue
        stats = {m: s for (t, m), s in sums.items() if t == task}
        mean = {m: s[0] / s[3] for m, s in stats.items()}
        cost = {m: s[2] / s[3] for m, s in stats.items()}
        binary = all(s[4] for s in stats.values())
        n_task = None if calls is None else calls.get(task)
        c_fb = cost.get(fallback)
        feasible = [m for m in stats if mean[m] >= floor - 1e-12]
        cands = [
            m
            for m in stats
            if m != fallback and c_fb is not None and cost[m] <= (1 - min_saving) * c_fb
        ]
        clear = [m for m in cands if m in feasible]
        none = TaskDifficulty(
            floor, None, None, None, None, 0.0, 0.0, n_task, 0.0 if n_task else None
        )
        if not clear:  # nothing to find: the fallback is the answer
            out[task] = none
            continue
        c_star = min(cost[m] for m in clear)
        top = c_star * 1.01  # models of one price differ by their token counts
        targets = [m for m in clear if cost[m] <= top]
        rivals = [m for m in cands if m not in feasible and cost[m] <= top]
        if not rivals:
            best = max(targets, key=lambda m: mean[m])
            out[task] = TaskDifficulty(
                floor, best, mean[best], None, None, 0.0, 0.0, n_task, 0.0 if n_task else None
            )
            continue

        def kl(r: str, t: str, st: Mapping[str, list[float]] = stats, b: bool = binary) -> float:
            return _outcome_kl(st[r], st[t], b)

        # Each rival against the target easiest to tell it from; the hardest
        # rival decides.
        pairs = [(max(targets, key=lambda t: kl(r, t)), r) for r in rivals]
        target, rival = min(pairs, key=lambda p: kl(p[1], p[0]))
        n = wald_calls(kl(rival, target), error)
        ev = n / 2.0
        out[task] = TaskDifficulty(
            floor=floor,
            target=target,
            target_quality=mean[target],
            rival=rival,
            rival_quality=mean[rival],
            wald_calls=n,
            expected_violations=ev,
            calls=n_task,
            share_of_calls=None if not n_task else min(ev / n_task, 1.0),
        )
    return out
