"""FloorBandit: the cheapest model that clears the floor, learned online.

The quality floor is a constraint, not a weight. The base class has already
dropped every model the evidence shows below the floor and settled the
*safe arm* (the fallback, or the model that replaced a fallback shown below
the floor). FloorBandit decides what to do with the rest:

* **candidates** are models whose realised cost per call is at least
  ``min_saving`` below the safe arm's: a model dearer than the fallback is
  never chosen under a floor, and one that saves a few percent is not worth
  the risk of learning it.
* **exploit** the candidate whose saving outweighs the expected price of a
  violation: ``(c_safe - c_k) - violation_price * c_safe * (1 - P_k) > 0``,
  where ``P_k`` is the posterior probability that it clears the floor (with
  the default price of 3 safe-arm calls, a model that saves 90% is used at
  P >= 0.7, one that saves 60% at 0.8, never later than at ``enter``). It
  needs ``min_obs`` outcomes first, and once exploited it stays while P is
  at most ``enter - stay`` below its entry bar (hysteresis: a model that
  dips does not send traffic back and forth). The model each floor is
  exploited on is kept in the task's state (``learning.TaskMemory``), so
  every replica agrees.
* **learn in cost order** (``learn_order="cost"``): while no model is
  exploited, the learning calls go to the cheapest *price tier* that still
  has a candidate worth learning (the candidates within ``min_saving`` of the
  cheapest one's realised cost; a tier is left once the learning gate drops
  its models on evidence). A cheapest model that clears is certified with
  no call below the floor and no dearer rival is tried at all; what learning
  costs is then only the cheaper rivals just below the floor, which any
  policy must rule out (the floor difficulty of ``tally_core.eval.difficulty``
  counts exactly those). With the exploit rule's price at 3 it keeps 0.901
  of the oracle's savings at 0.93% below the floor on 16 drawn triples of
  real task types (the widest-margin rule at price 6: 0.819 at 1.16%) and
  0.894 at 1.17% on 16 of the held-out shape (0.773 at 1.78%), but puts
  more calls below the floor where the *cheapest* model is a rival a point
  or two below it, and in task types of a few hundred calls (BENCHMARKS.md,
  issue 12, fifth pass). ``learn_order="margin"`` restores the rule below
  over every candidate.
* **within a tier**, Thompson sampling among candidates whose posterior still
  gives them a chance of clearing and that would save more than the current
  choice, aimed at the **widest margin** (``saving_weight``): draw every
  posterior, send the call to the model whose draw is furthest above the
  floor, plus ``saving_weight`` (0.2) times its saving as a share of the
  safe arm's cost (so of two models about as good, the cheaper is
  learned). Aimed at the cheapest model instead, learning went to a
  cheaper rival just below the floor; the widest margin certifies a
  feasible model on fewer calls, and a cheaper one is learned after.
  ``saving_weight=None`` restores draws priced by the exploit rule (then
  ``top_two`` below 1 makes it top-two sampling). Learning runs on
  ``seed_share`` of a task type's first ``allowance`` calls, until a model
  is exploited; after that, while the task type is still on the safe arm,
  on ``resolve_share`` of calls, among candidates with P >= ``resolve_gate``,
  while the task's learning calls are fewer than ``resolve_calls +
  resolve_per_call * calls`` (the resolution cap, 200 + 2% of calls at a 1%
  rate); once a model is exploited, on ``explore_share`` of calls, only on a
  clearly cheaper model (``min_saving`` below the exploited one's cost: models
  of one price differ by noise in their realised cost, not by a saving), and
  only when its draw clears the floor.
* **the risk budget**: learning stops while its expected number of calls
  below the floor so far (each model's learning calls, times how much
  likelier than the safe arm it now looks to be below the floor) is at or
  above ``max_violation_rate * (calls + onboarding_calls)``. The user states
  that rate; the budgets follow from it. The safe arm is read at its
  posterior, its prior while it has no outcomes: at a high floor a uniform
  prior says it probably does not clear either, so the allowance's
  learning calls (which leave the safe arm idle) are priced at little until
  its first outcomes arrive, and then at their full risk at once. Priced
  as if the safe arm cleared from the start, the budget holds learning to
  the stated rate but keeps far less of the savings (0.821 against 0.894
  of the oracle's, at 0.97% against 1.17% of calls below the floor, on the
  held-out shape: BENCHMARKS.md, issue 12, sixth pass); cautious mode does
  that, and more.
* **cautious mode** (``cautious=True``) spends less of that risk, for
  fewer savings (the trade-off is measured in BENCHMARKS.md, issue 12):
  a learning call keeps its pick with probability P(pick clears) **
  ``learn_confidence_power`` (else it goes to the current default), so a
  model likelier below the floor is learned more slowly; the allowance
  counts learning calls rather than the task type's calls; and a safe arm
  with fewer than ``min_fail_obs`` outcomes of its own counts as clearing
  when the risk is priced (at a high floor its uniform prior says it
  probably does not, which priced every learning call at almost nothing
  while the allowance kept it idle: a 0.78 floor spent 350 calls below it
  in one task type's first 400).
* **a doubtful safe arm** (P(clears) < ``doubt_below``: the fallback looks
  below the floor and nothing is proven above it yet) is no bar to clear:
  learning is not budgeted (the safe arm's calls are no safer), aims at what
  clears at all rather than at what is cheapest, and a model more likely
  above the floor than below it is used instead.

>>> from tally_core.learning import EMPTY_VIEW
>>> from tally_core.policy.base import Candidate
>>> p = FloorBandit()
>>> plan = p.plan([Candidate("cheap", 0.001, EMPTY_VIEW), Candidate("big", 0.01, EMPTY_VIEW)],
...               0.8, "big")
>>> plan.exploit, plan.fallback, plan.explore
(None, 'big', ['cheap'])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tally_core.errors import InvalidFieldError
from tally_core.learning import TaskMemory
from tally_core.policy.base import Candidate, Choice, Plan, Policy, check_number
from tally_core.policy.floor import posterior_mean, posterior_sd

__all__ = ["FloorBandit"]

_LEARN_ORDERS = ("cost", "margin")

_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class _Arm:
    name: str
    mean: float
    sd: float
    saving: float
    confidence: float


@dataclass(frozen=True, slots=True)
class _Data:
    default: str  # the exploited model, or the safe arm
    default_phase: str
    default_saving: float
    share: float  # chance a call learns
    phase: str  # the phase of a learning call
    arms: tuple[_Arm, ...]
    bar: float
    top_two: float
    price: float  # USD a call below the floor costs, in a draw
    default_value: float
    doubtful: bool
    p_safe: float
    c_safe: float = 0.0
    saving_weight: float | None = None  # None: learning draws priced by the exploit rule
    exploiting: bool = False
    confidence_power: float = 0.0  # a learning call keeps its pick with P(clears) ** this


class FloorBandit(Policy):
    """Route to the cheapest model that clears the quality floor, learning
    which one that is within a stated risk.

    Parameters
    ----------
    max_violation_rate
        The risk the user accepts: the share of calls that learning may
        send below the floor, over the life of a task type. Default 1%.
    onboarding_calls
        The budget starts as if the task type had this many calls already,
        so a new task type can learn at once.
    violation_price
        What one call below the floor costs, in calls of the safe arm
        (the cost-weighted exploit rule). With learning in cost order, 3
        kept 0.026 more of the oracle's savings than 6 at the same share of
        calls below the floor on 32 drawn triples of real task types, 2 more
        again at more violations (BENCHMARKS.md, issue 12, fifth pass).
    learn_price
        The same price for one learning call, which also buys information:
        lower, so a promising model is tried before it would be exploited.
    enter, stay
        P(clears) at which a model that saves little is exploited, and the
        gap (``enter - stay``) it may then fall before it is dropped.
    min_obs
        Outcomes a model needs before it is exploited.
    min_saving
        A candidate must cost at least this share less than the safe arm.
    allowance, seed_share
        Learning runs on ``seed_share`` of a task type's first ``allowance``
        calls (learning calls, in cautious mode); by default ``40_000 *
        max_violation_rate`` (400 calls at 1%), so a lower stated rate
        learns on fewer calls (the allowance sends learning calls below the
        floor faster than the risk budget can see at a high floor: with a
        fixed 400, a stated 0.25% still spent 2.5% on a dev triple).
    cautious, learn_confidence_power
        Cautious mode (see above), and the power of P(clears) with which a
        learning call keeps its pick in it.
    learn_gate, learn_gate_obs
        During the allowance, only candidates with P(clears) >= this are
        learned, once they have ``learn_gate_obs`` outcomes (by default the
        base's ``min_fail_obs``, 10; before that they stay learnable); when
        none is left while on the safe arm, the likeliest one still is. Gating
        on 30 outcomes rather than 10 keeps 0.914 of the oracle's savings
        rather than 0.894 at the same 1.17% below the floor on the held-out
        shape (a model that clears can read P 0.1 on its first 10 outcomes,
        and is then dropped for good), but a cheap rival takes 30 calls before
        it can be dropped: in short or many small task types that costs more
        than it saves (the replay example, 3,000 calls, seed 1: 8.9% of calls
        below the floor against 3.6%), so the default stays 10 (BENCHMARKS.md,
        issue 12, sixth pass).
    learn_order
        ``"cost"``: before a model is exploited, learning goes to the
        cheapest price tier with a candidate left to learn (see above);
        ``"margin"``: to every candidate, by the draws below.
    saving_weight
        How much a learning draw weighs the saving against the margin above
        the floor (see above); None: draws priced by the exploit rule.
    resolve_share, resolve_calls, resolve_per_call, resolve_gate
        After the allowance, while a task type is still on the safe arm:
        learning on ``resolve_share`` of calls, on candidates with P(clears)
        >= ``resolve_gate``, while the task type's learning calls (all of
        them, the allowance's too) are fewer than ``resolve_calls +
        resolve_per_call * calls`` (by default ``20_000 *
        max_violation_rate`` and ``2 * max_violation_rate``: 200 calls and
        2% of calls at 1%).
    explore_share
        Learning share once a model is exploited.
    top_two
        Chance a learning call follows the sampled best, not its challenger.
    doubt_below
        A safe arm whose P(clears) is below this is doubtful: its calls are
        no safer than learning, so learning is not budgeted, aims at what
        clears at all, and a model more likely above the floor than below
        it is used instead.
    latency_cost_factor
        Time-sensitive calls may take a faster proven model up to this
        multiple of the exploited model's cost.
    """

    def __init__(
        self,
        *,
        max_violation_rate: float = 0.01,
        onboarding_calls: int = 6000,
        violation_price: float = 3.0,
        learn_price: float = 1.0,
        enter: float = 0.95,
        stay: float = 0.6,
        min_obs: int = 30,
        min_saving: float = 0.10,
        allowance: int | None = None,
        seed_share: float = 1.0,
        resolve_share: float = 0.2,
        resolve_calls: int | None = None,
        resolve_per_call: float | None = None,
        resolve_gate: float = 0.2,
        explore_share: float = 0.01,
        top_two: float = 1.0,
        learn_gate: float = 0.15,
        latency_cost_factor: float = 4.0,
        doubt_below: float = 0.05,
        saving_weight: float | None = 0.2,
        cautious: bool = False,
        learn_confidence_power: float = 0.5,
        learn_order: str = "cost",
        learn_gate_obs: int | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.max_violation_rate = check_number("max_violation_rate", max_violation_rate, 0.0, 0.5)
        self.onboarding_calls = int(check_number("onboarding_calls", onboarding_calls, 0, 1e9))
        self.violation_price = check_number("violation_price", violation_price, 0.01, 1e6)
        self.learn_price = check_number("learn_price", learn_price, 0.0, 1e6)
        self.enter = check_number("enter", enter, 0.5, 0.9999)
        self.stay = check_number("stay", stay, 0.0, self.enter)
        self.min_obs = int(check_number("min_obs", min_obs, 1, 100_000))
        self.min_saving = check_number("min_saving", min_saving, 0.0, 0.99)
        self.allowance = int(
            check_number(
                "allowance",
                round(40_000 * self.max_violation_rate) if allowance is None else allowance,
                0,
                1e9,
            )
        )
        self.seed_share = check_number("seed_share", seed_share, 0.0, 1.0)
        self.resolve_share = check_number("resolve_share", resolve_share, 0.0, 1.0)
        rho = self.max_violation_rate
        self.resolve_calls = int(
            check_number(
                "resolve_calls", 20_000 * rho if resolve_calls is None else resolve_calls, 0, 1e9
            )
        )
        self.resolve_per_call = check_number(
            "resolve_per_call", 2 * rho if resolve_per_call is None else resolve_per_call, 0.0, 1.0
        )
        self.resolve_gate = check_number("resolve_gate", resolve_gate, 0.0, 1.0)
        self.explore_share = check_number("explore_share", explore_share, 0.0, 1.0)
        self.top_two = check_number("top_two", top_two, 0.0, 1.0)
        self.learn_gate = check_number("learn_gate", learn_gate, 0.0, 1.0)
        self.doubt_below = check_number("doubt_below", doubt_below, 0.0, 0.5)
        self.saving_weight = (
            None
            if saving_weight is None
            else check_number("saving_weight", saving_weight, 0.0, 10.0)
        )
        self.cautious = bool(cautious)
        self.learn_confidence_power = check_number(
            "learn_confidence_power", learn_confidence_power, 0.0, 10.0
        )
        self.latency_cost_factor = check_number(
            "latency_cost_factor", latency_cost_factor, 1.0, 1e6
        )
        if learn_order not in _LEARN_ORDERS:
            raise InvalidFieldError(
                "learn_order", f"must be one of {', '.join(_LEARN_ORDERS)}, got {learn_order!r}"
            )
        self.learn_order = learn_order
        gate_obs = self.min_fail_obs if learn_gate_obs is None else learn_gate_obs
        self.learn_gate_obs = int(check_number("learn_gate_obs", gate_obs, 1, 100_000))

    def resolve_cap(self, calls: float) -> float:
        """Learning calls after which a task type stuck on the safe arm stops
        resolving, at ``calls`` calls of it.

        >>> FloorBandit().resolve_cap(1000)
        220.0
        """
        return self.resolve_calls + self.resolve_per_call * calls

    def entry_bar(self, saving_share: float) -> float:
        """P(clears) at which a model saving ``saving_share`` of the safe
        arm's cost is exploited.

        >>> p = FloorBandit()
        >>> round(p.entry_bar(0.9), 2), round(p.entry_bar(0.6), 3), p.entry_bar(0.05)
        (0.7, 0.8, 0.95)
        """
        return min(max(1.0 - saving_share / self.violation_price, 0.5), self.enter)

    def _plan(
        self,
        survivors: Sequence[Candidate],
        bar: float,
        safe: str,
        confidence: Mapping[str, float],
        costs: Mapping[str, float],
        *,
        memory: TaskMemory,
        leader: str | None,
        time_sensitive: bool,
        task_type: str | None = None,
        complexity: str | None = None,
    ) -> Plan:
        c_safe = costs.get(safe)
        if c_safe is None or c_safe <= 0.0:
            c_safe = max(costs.values(), default=0.0)
        cands = [
            c
            for c in survivors
            if c.name != safe and c_safe > 0 and c.cost_usd <= (1.0 - self.min_saving) * c_safe
        ]
        gap = self.enter - self.stay
        # A safe arm that is itself doubtful (the fallback looks below the
        # floor, nothing is proven above it yet) is no bar to clear: a model
        # at least as likely above the floor as below it beats it.
        p_safe = confidence.get(safe, 1.0)
        on_safe = next((c for c in survivors if c.name == safe), None)
        if on_safe is None:  # the base dropped it: shown below the floor
            doubtful = safe in confidence
        else:  # doubtful on evidence, never on the prior alone
            doubtful = on_safe.view.n >= self.min_fail_obs and p_safe < self.doubt_below
        # The risk spent so far, priced by what is known now: each model's
        # calls off the safe arm, times how much likelier it is than the safe
        # arm to be below the floor (nothing, when the safe arm is doubtful too).
        # Cautious: until the safe arm has evidence of its own, it is taken at
        # its word (it clears): its prior says nothing, and with no calls on it
        # yet (the allowance sends every call to learning) the risk at a high
        # floor would read as none.
        p_ref = (
            p_safe
            if not self.cautious or on_safe is None or on_safe.view.n >= self.min_fail_obs
            else 1.0
        )
        spent = sum(c.view.risky_calls * max(p_ref - confidence[c.name], 0.0) for c in survivors)
        budget = self.max_violation_rate * (memory.clock + self.onboarding_calls)
        room = spent < budget
        exploit: Candidate | None = None
        best_value = 0.0
        for c in cands:
            p = confidence[c.name]
            if c.view.n < self.min_obs:
                continue
            share = (c_safe - c.cost_usd) / c_safe
            need = 0.5 if doubtful else self.entry_bar(share)
            if c.name == leader:
                need = max(need - gap, 0.5 if need < self.enter else self.stay)
            if p < need:
                continue
            value = (c_safe - c.cost_usd) - self.violation_price * c_safe * (1.0 - p)
            if c.name == leader:
                value = max(value, 1e-12) * 1.02  # ties stay where they are
            if exploit is None or value > best_value:
                exploit, best_value = c, value
        if exploit is not None and time_sensitive:
            cap = exploit.cost_usd * self.latency_cost_factor
            fast = [
                c
                for c in cands
                if c.cost_usd <= cap
                and c.view.latency_ms is not None
                and (
                    c is exploit or (c.view.n >= self.min_obs and confidence[c.name] >= self.enter)
                )
            ]
            if fast:
                exploit = min(fast, key=lambda c: (c.view.latency_ms or math.inf, c.cost_usd))
        default = exploit.name if exploit is not None else safe
        default_saving = c_safe - exploit.cost_usd if exploit is not None else 0.0

        # Cautious: the allowance counts learning calls, not the task type's
        # calls (learning thinned by confidence would otherwise run out of
        # allowance before it had learned anything).
        in_allowance_clock = (memory.learn if self.cautious else memory.clock) < self.allowance
        in_allowance = in_allowance_clock and exploit is None
        if in_allowance or doubtful:
            # While the safe arm looks below the floor, its calls are no safer
            # than learning: learn on as many calls as it is doubtful.
            share, gate, phase = self.seed_share, self.learn_gate, "explore"
            if doubtful:
                # Half the calls stay on the safe arm, so its evidence can
                # recover if it was an unlucky run; learning is capped.
                share = (
                    0.5 if memory.learn < self.allowance + self.resolve_cap(memory.clock) else 0.0
                )
        elif exploit is None and memory.learn < self.resolve_cap(memory.clock):
            share, gate, phase = self.resolve_share, self.resolve_gate, "explore"
        else:
            share, gate, phase = self.explore_share, self.resolve_gate, "explore"
        views = {c.name: c.view for c in survivors}
        arms = tuple(
            _Arm(
                c.name,
                posterior_mean(c.view),
                posterior_sd(c.view),
                c_safe - c.cost_usd,
                confidence[c.name],
            )
            for c in ([c for c in survivors if c.name != safe] if doubtful else cands)
            if c is not exploit
            # Once a model is exploited, only a clearly cheaper one is worth
            # learning: models of about its price differ by noise in their
            # realised cost, not by a saving.
            and (
                doubtful
                or (exploit is None and c_safe - c.cost_usd > default_saving)
                or (
                    exploit is not None and c.cost_usd <= (1.0 - self.min_saving) * exploit.cost_usd
                )
            )
        )
        # A gate on evidence only: 0 of 2 does not rule a model out. When it
        # would leave nothing to learn while on the safe arm, the likeliest
        # arm stays (7 of 12 must not keep a task type on the safe arm for good).
        gated = tuple(
            a for a in arms if a.confidence >= gate or views[a.name].n < self.learn_gate_obs
        )
        if not gated and arms and exploit is None:
            gated = (max(arms, key=lambda a: a.confidence),)
        arms = gated
        if self.learn_order == "cost" and exploit is None and not doubtful and arms:
            # The cheapest price tier left: a cheapest model that clears is
            # certified with no call below the floor, and dearer rivals wait.
            c0 = min(c_safe - a.saving for a in arms)
            arms = tuple(a for a in arms if c_safe - a.saving <= c0 / (1.0 - self.min_saving))
        if exploit is not None and not doubtful and arms:
            # A cheaper model beside the exploited one: at the share that
            # keeps its expected calls below the floor at ``explore_share``
            # of calls, so one that is probably feasible is learned fast (up
            # to every call of the allowance, ``resolve_share`` after) and a
            # rival slowly. Two equally good models must not leave the dearer
            # one exploited for good.
            risk = 1.0 - max(a.confidence for a in arms)
            cap = self.seed_share if in_allowance_clock else self.resolve_share
            share = min(max(self.explore_share / max(risk, 1e-9), self.explore_share), cap)
        # Learning waits while the risk spent is over budget (resolution has
        # its call cap besides); not while the safe arm itself is doubtful.
        if not arms or not (room or doubtful):
            share = 0.0
        data = _Data(
            default=default,
            default_phase="exploit" if exploit is not None else "fallback",
            default_saving=default_saving,
            share=share,
            phase=phase,
            arms=arms,
            bar=bar,
            top_two=self.top_two,
            price=self.learn_price * c_safe,
            doubtful=doubtful,
            p_safe=p_safe,
            c_safe=c_safe,
            saving_weight=self.saving_weight,
            exploiting=exploit is not None,
            confidence_power=(
                self.learn_confidence_power if self.cautious and not doubtful else 0.0
            ),
            default_value=(
                0.0
                if exploit is None or doubtful
                else default_saving - self.learn_price * c_safe * (1.0 - confidence[exploit.name])
            ),
        )
        notes = []
        if share == 0.0 and spent >= budget and cands:
            notes.append(
                f"risk budget spent: {spent:.1f} expected calls below the floor of "
                f"{budget:.1f} allowed; learning waits"
            )
        return Plan(
            floor=bar,
            exploit=None if exploit is None else exploit.name,
            fallback=safe,
            confidence=dict(confidence),
            costs=dict(costs),
            explore=[a.name for a in arms] if share > 0 else [],
            notes=notes,
            data=data,
        )

    def _pick(
        self,
        plan: Plan,
        uniform: Callable[[], float],
        normal: Callable[[], float],
        pending: Mapping[str, int],
    ) -> Choice:
        d: _Data = plan.data
        if d.share > 0.0 and uniform() < d.share:
            first = _sampled_best(d, normal)
            pick = first
            if first is not None and uniform() >= d.top_two:
                # Its challenger: the best of another draw that differs (the
                # current default included, so a lucky draw alone does not
                # send a call to a model that is probably below the floor).
                for _ in range(4):
                    other = _sampled_best(d, normal)
                    if other is not first:
                        pick = other
                        break
            # A pick likelier below the floor keeps the call less often (the
            # rest go to the default): learning spends fewer calls below the
            # floor for each model it certifies.
            if pick is not None and (
                d.confidence_power == 0.0 or uniform() < pick.confidence**d.confidence_power
            ):
                return Choice(pick.name, d.phase, pick.confidence)  # type: ignore[arg-type]
        return Choice(d.default, d.default_phase, plan.confidence.get(d.default, 0.0))  # type: ignore[arg-type]

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"max_violation_rate": 0.01}


def _sampled_best(d: _Data, normal: Callable[[], float]) -> _Arm | None:
    """The arm that would win the exploit rule in one posterior draw: for a
    drawn quality, the chance it clears the floor is re-read from the
    posterior, and the arm's saving less the price of that risk is compared
    with the current default's. A model drawn just above the floor (a rival
    a little below it) rarely wins; one likely to be certified often does.
    None: the current default."""
    if d.saving_weight is not None and not d.doubtful:
        return _margin_best(d, normal)
    best, best_value = None, d.default_value
    for a in d.arms:
        z = (a.mean - d.bar) / a.sd + normal()
        p = 0.5 * (1.0 + math.erf(z / _SQRT2))
        # A doubtful safe arm: what matters is clearing at all.
        value = p - d.p_safe if d.doubtful else a.saving - d.price * (1.0 - p)
        if value > best_value:
            best, best_value = a, value
    return best


def _margin_best(d: _Data, normal: Callable[[], float]) -> _Arm | None:
    """Thompson sampling for the arm most likely to clear the floor: each
    arm's drawn quality less the floor, plus ``saving_weight`` times its
    saving as a share of the safe arm's cost. Aiming at the cheapest arm
    spends learning calls on rivals just below the floor; aiming at the
    widest margin certifies a feasible model on fewer calls, and the cheaper
    ones are learned after, on the exploration share. With a model
    exploited, a cheaper arm is tried only when its draw clears the floor."""
    w = d.saving_weight or 0.0
    best, best_value = None, 0.0 if d.exploiting else -math.inf
    for a in d.arms:
        value = a.mean + a.sd * normal() - d.bar
        if not d.exploiting:
            value += w * a.saving / d.c_safe if d.c_safe > 0 else 0.0
        if value > best_value:
            best, best_value = a, value
    return best
