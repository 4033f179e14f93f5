"""Cascades: try a cheap model first, escalate when its answer fails the checks.

The logic lives here, host-free; the adapters make the calls
(``tally_litellm.cascade``). A cascade has **tiers** (models, cheapest
first, the last one the safe answer) and **checks** that accept or reject
an answer. Each tier's check results are quality telemetry for that model
and task type, so Tally learns each tier's pass rate, and the cascade starts
where it pays:

**Learned entry tier.** With per-call costs ``c_i`` and pass rates ``p_i``
(a Beta(1, 1) posterior mean of the checks' results per task type; the last
tier always "passes", its answer is accepted whatever the checks say), the
expected cost of starting at tier ``i`` is

    E_i = c_i + (1 - p_i) * E_{i+1},    E_last = c_last

and the cascade starts at the tier with the lowest ``E_i``: tier ``i`` is
worth trying first while ``c_i < p_i * E_{i+1}``, i.e. while its pass rate
beats its cost relative to what follows. A tier whose pass rate is unknown
counts at the prior (0.5), so a new cheap tier is tried; one at half
the next tier's cost that fails 90% of its checks is not worth the detour, and
the cascade starts one tier up (one at an eighth of the cost still pays at
10%). A small ``explore`` share of cascades starts at the cheapest tier
anyway, so a tier that improved is noticed. Tiers whose evidence shows them
below the task's quality floor are never tried.

>>> from tally_core import Tally
>>> tally = Tally(["gpt-4o-mini", "gpt-4o"], fallback="gpt-4o", store=":memory:", seed=0)
>>> run = Cascade(checks=[NonEmpty(min_chars=3)]).start(tally, {"task_type": "qa-simple"})
>>> run.tiers
['gpt-4o-mini', 'gpt-4o']
>>> run.next_tier()
(0, 'gpt-4o-mini')
>>> run.record(0, {"messages": []}, "ok", cost_usd=1e-5, latency_ms=4.0,
...            decision_id=None).passed   # too short: escalate
False
>>> run.next_tier()
(1, 'gpt-4o')
>>> tally.close()
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tally_core.errors import InvalidFieldError

__all__ = [
    "Cascade",
    "CascadeAttempt",
    "CascadeResult",
    "CascadeRun",
    "Check",
    "JsonValid",
    "Judge",
    "Matches",
    "NoRefusal",
    "NonEmpty",
    "entry_tier",
    "response_text",
]

Check = Callable[[Mapping[str, Any], Any], "bool | float | CheckScore"]
"""``check(request, response) -> bool | float``: accept (True, or a score >= the
cascade's ``pass_score``) or reject. ``request`` holds ``messages`` and
``task_type``; ``response`` is the host's response object."""

_REFUSALS = re.compile(
    r"\b(i can(?:no|')t (?:help|assist|do that|comply)|i(?: am|'m) (?:not able|unable) to|"
    r"i don't know|as an ai(?: language model)?|i (?:must|have to) decline|"
    r"i'm sorry, but i can)\b",
    re.IGNORECASE,
)


def response_text(response: Any) -> str:
    """The answer's text from a string, an OpenAI/LiteLLM response or a LangChain message.

    >>> response_text("hi"), response_text({"choices": [{"message": {"content": "yo"}}]})
    ('hi', 'yo')
    """
    if response is None:
        return ""
    if isinstance(response, str):
        return response
    choices = response.get("choices") if isinstance(response, Mapping) else getattr(
        response, "choices", None)
    if isinstance(choices, Sequence) and choices:
        first = choices[0]
        msg = first.get("message") if isinstance(first, Mapping) else getattr(first, "message",
                                                                               None)
        content = msg.get("content") if isinstance(msg, Mapping) else getattr(msg, "content",
                                                                              None)
        return content if isinstance(content, str) else ""
    content = getattr(response, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # LangChain content blocks
        return "".join(p if isinstance(p, str) else str(p.get("text", ""))
                       for p in content if isinstance(p, (str, Mapping)))
    return ""


@dataclass(frozen=True)
class CheckScore:
    """A check's verdict with what the check itself cost (a judge model's call)."""

    score: float
    cost_usd: float = 0.0


@dataclass(frozen=True)
class NonEmpty:
    """At least ``min_chars`` non-blank characters."""

    min_chars: int = 1

    def __call__(self, request: Mapping[str, Any], response: Any) -> bool:
        return len(response_text(response).strip()) >= self.min_chars


@dataclass(frozen=True)
class NoRefusal:
    """Not a refusal or an "I don't know".

    >>> NoRefusal()({}, "I'm sorry, but I can't help with that.")
    False
    """

    def __call__(self, request: Mapping[str, Any], response: Any) -> bool:
        return _REFUSALS.search(response_text(response)) is None


@dataclass(frozen=True)
class JsonValid:
    """The answer parses as JSON (a fenced ```json block counts); with ``schema``, a
    dict holding each required key of a JSON schema, of the right JSON type."""

    schema: Mapping[str, Any] | None = None

    def __call__(self, request: Mapping[str, Any], response: Any) -> bool:
        text = response_text(response).strip()
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except ValueError:
            return False
        if self.schema is None:
            return True
        return _fits(value, self.schema)


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
    "number": (int, float), "boolean": (bool,), "null": (type(None),),
}


def _fits(value: Any, schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _JSON_TYPES:
        if not isinstance(value, _JSON_TYPES[kind]) or (
            kind in ("integer", "number") and isinstance(value, bool)
        ):
            return False
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key in schema.get("required") or ():
            if key not in value:
                return False
        for key, sub in props.items():
            if key in value and isinstance(sub, Mapping) and not _fits(value[key], sub):
                return False
    return True


@dataclass(frozen=True)
class Matches:
    """The answer matches ``regex`` (``re.search``)."""

    regex: str
    flags: int = 0

    def __call__(self, request: Mapping[str, Any], response: Any) -> bool:
        return re.search(self.regex, response_text(response), self.flags) is not None


@dataclass(frozen=True)
class Judge:
    """Ask a (cheap) model to grade the answer 0-10; pass at ``threshold`` (0-1).

    ``ask(prompt) -> (reply_text, cost_usd)`` makes the call: the adapters
    build it (``tally_litellm.judge(model)``), so this stays host-free. The
    judge's own cost is counted in the cascade's cost. The grading prompt
    holds the question and the answer: it goes to the model you name, in
    process, and is never stored.
    """

    ask: Callable[[str], tuple[str, float]]
    threshold: float = 0.7

    def __call__(self, request: Mapping[str, Any], response: Any) -> CheckScore:
        question = _last_user_text(request.get("messages"))
        prompt = (
            "Grade how well the answer solves the request, from 0 (useless or wrong) to 10 "
            "(complete and correct). Reply with the number only.\n\n"
            f"Request:\n{question[:8000]}\n\nAnswer:\n{response_text(response)[:8000]}"
        )
        reply, cost = self.ask(prompt)
        m = re.search(r"\d+(?:\.\d+)?", reply or "")
        grade = min(max(float(m.group(0)) / 10.0, 0.0), 1.0) if m else 0.0
        return CheckScore(1.0 if grade >= self.threshold else grade * 0.5, cost)


def _last_user_text(messages: Any) -> str:
    for m in reversed(list(messages or ())):
        role = m.get("role") if isinstance(m, Mapping) else getattr(m, "type", None)
        if role in ("user", "human"):
            return response_text(m.get("content") if isinstance(m, Mapping) else m)
    return ""


@dataclass
class CascadeAttempt:
    """One tier's try: which model, whether its answer passed, what it cost."""

    tier: int
    model: str
    passed: bool
    quality: float
    cost_usd: float
    latency_ms: float
    decision_id: str | None = None


@dataclass
class CascadeResult:
    """What a cascade came to: the accepted answer and every attempt before it."""

    response: Any
    model: str
    tier: int
    attempts: list[CascadeAttempt]
    cost_usd: float
    cascade_id: str


def entry_tier(costs: Sequence[float], pass_rates: Sequence[float]) -> int:
    """The tier where the expected cost of the whole cascade is lowest.

    >>> entry_tier([1.0, 10.0], [0.9, 1.0])   # cheap tier usually passes: start there
    0
    >>> entry_tier([1.0, 10.0], [0.05, 1.0])  # it fails 95%: the detour costs more
    1
    """
    if len(costs) != len(pass_rates) or not costs:
        raise ValueError("one cost and one pass rate per tier")
    expected = costs[-1]
    best, best_cost = len(costs) - 1, expected
    for i in range(len(costs) - 2, -1, -1):
        expected = costs[i] + (1.0 - pass_rates[i]) * expected
        if expected < best_cost - 1e-15:
            best, best_cost = i, expected
    return best


@dataclass
class Cascade:
    """Tiers, checks and the rule to accept an answer.

    Parameters
    ----------
    checks
        Each ``check(request, response) -> bool | float``; an answer passes
        when every check passes (a float at or above ``pass_score``).
    tiers
        Models, cheapest first. Default: the Tally's pool by estimated cost
        per call for the task type, ending at its fallback.
    learn_entry
        Start at the learned entry tier (module docstring); False: always at
        the cheapest.
    explore
        With a learned entry above the cheapest tier, the share of cascades
        that still start at the cheapest, so a tier that got better is noticed.
    pass_score
        The score a float check must reach.
    seed
        For the exploration draws (default: the Tally's seed).
    """

    checks: Sequence[Check]
    tiers: Sequence[str] | None = None
    learn_entry: bool = True
    explore: float = 0.05
    pass_score: float = 0.5
    seed: int | None = None
    _rng: random.Random | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.checks or not all(callable(c) for c in self.checks):
            raise InvalidFieldError("checks", "must be a non-empty list of callables "
                                    "check(request, response) -> bool | float")
        if self.tiers is not None and (
            not self.tiers or not all(isinstance(t, str) and t for t in self.tiers)
        ):
            raise InvalidFieldError("tiers", "must be a non-empty list of model names")
        for name in ("pass_score", "explore"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
                raise InvalidFieldError(name, f"must be in 0-1, got {value!r}")

    def _draw(self, tally: Any) -> float:
        if self._rng is None:
            self._rng = random.Random(self.seed if self.seed is not None else tally.seed)
        return self._rng.random()

    def start(
        self, tally: Any, envelope: Mapping[str, Any], available: Collection[str] | None = None
    ) -> CascadeRun:
        """Plan one cascade for one request: the tiers to try, in order.

        ``available``: the models the adapter can call (default tiers are
        limited to them; the fallback stays last).
        """
        return CascadeRun(self, tally, dict(envelope), available)


class CascadeRun:
    """One request's way through the tiers (the adapters drive it)."""

    def __init__(
        self,
        cascade: Cascade,
        tally: Any,
        envelope: dict[str, Any],
        available: Collection[str] | None = None,
    ) -> None:
        self.cascade = cascade
        self.tally = tally
        self.envelope = envelope
        self.cascade_id = uuid.uuid4().hex[:16]
        self.task_type = str(envelope.get("task_type") or "general")
        self.org = str(envelope.get("org") or "default")
        floor = envelope.get("quality_floor")
        stats = {s["model"]: s for s in tally.stats(
            self.task_type, org=self.org,
            quality_floor=floor if isinstance(floor, (int, float)) else None)}
        names = list(cascade.tiers) if cascade.tiers is not None else _by_cost(tally, stats)
        if available is not None and cascade.tiers is None:
            names = [n for n in names[:-1] if n in available] + names[-1:]
        unknown = [n for n in names if n not in tally.catalog]
        if unknown:
            raise InvalidFieldError("tiers", f"not in the Tally's pool: {unknown}")
        # Under a floor, a tier with evidence of failing it is never tried (the last stays:
        # it is the answer of last resort). Without one the checks alone decide.
        has_floor = isinstance(floor, (int, float))
        kept = [n for n in names[:-1]
                if not (has_floor and stats.get(n, {}).get("phase") == "excluded")]
        self.tiers: list[str] = [*kept, names[-1]]
        costs = [_cost_per_call(stats.get(n, {})) for n in self.tiers]
        rates = [_pass_rate(stats.get(n, {})) for n in self.tiers]
        self.entry = entry_tier(costs, rates) if cascade.learn_entry else 0
        if self.entry > 0 and cascade._draw(tally) < cascade.explore:
            self.entry = 0  # keep learning the cheaper tiers' pass rates
        self.attempts: list[CascadeAttempt] = []
        self._next = self.entry

    @property
    def tags(self) -> tuple[str, ...]:
        """Envelope tags that mark each attempt in the ledger as this cascade's."""
        return ("cascade", f"cascade:{self.cascade_id}")

    def next_tier(self) -> tuple[int, str] | None:
        """The tier to call next, or None when the cascade is done."""
        if self._next >= len(self.tiers) or (
            self.attempts and self.attempts[-1].passed
        ):
            return None
        return self._next, self.tiers[self._next]

    def envelope_for(self, tier: int) -> dict[str, Any]:
        """The envelope of one tier's call: only that tier's model, tagged as the cascade's."""
        env = dict(self.envelope)
        env["allowed_models"] = (self.tiers[tier],)
        env["tags"] = tuple(dict.fromkeys([*(env.get("tags") or ()), *self.tags,
                                           f"tier:{tier}"]))
        return env

    def _score(self, request: Mapping[str, Any], response: Any) -> tuple[float, float]:
        quality, extra = 1.0, 0.0
        req = {"task_type": self.task_type, **request}
        for check in self.cascade.checks:
            try:
                verdict = check(req, response)
            except Exception:
                verdict = False  # a check that raises rejects: escalate rather than trust it
            if isinstance(verdict, CheckScore):
                extra += verdict.cost_usd
                verdict = verdict.score
            score = (1.0 if verdict else 0.0) if isinstance(verdict, bool) else float(verdict)
            quality = min(quality, score if math.isfinite(score) else 0.0)
        return max(0.0, min(quality, 1.0)), extra

    def record(
        self,
        tier: int,
        request: Mapping[str, Any],
        response: Any,
        *,
        cost_usd: float | None,
        latency_ms: float,
        decision_id: str | None,
        model: str | None = None,
        grade: Callable[[float], None] | None = None,
    ) -> CascadeAttempt:
        """Check one tier's answer, tell Tally how it did, and move on if it failed.

        The checks' verdict is this model's quality on this call: ``grade(q)``
        hands it to the adapter (which sends it with the call's outcome);
        without one it goes as ``tally.feedback(decision_id, ...)``.
        """
        quality, check_cost = self._score(request, response)
        last = tier == len(self.tiers) - 1
        passed = quality >= self.cascade.pass_score
        served = model or self.tiers[tier]
        try:
            if grade is not None:
                grade(quality)
            elif decision_id is not None:
                self.tally.feedback(decision_id, quality=quality, model=served,
                                    task_type=self.task_type, org=self.org)
        except Exception:
            pass  # telemetry never breaks the caller's call
        attempt = CascadeAttempt(tier, served, passed or last, quality,
                                 (cost_usd or 0.0) + check_cost, latency_ms, decision_id)
        self.attempts.append(attempt)
        self._next = tier + 1
        return attempt

    def failed(self, tier: int, *, latency_ms: float, model: str | None = None) -> None:
        """The tier's call raised: escalate (the adapter's callback reported the error)."""
        self.attempts.append(CascadeAttempt(tier, model or self.tiers[tier], False, 0.0, 0.0,
                                            latency_ms))
        self._next = tier + 1

    def result(self, response: Any) -> CascadeResult:
        last = self.attempts[-1]
        return CascadeResult(
            response=response, model=last.model, tier=last.tier, attempts=list(self.attempts),
            cost_usd=sum(a.cost_usd for a in self.attempts), cascade_id=self.cascade_id,
        )


def _cost_per_call(stat: Mapping[str, Any]) -> float:
    calls, spent = stat.get("calls") or 0, stat.get("cost_usd") or 0.0
    if calls and spent:
        return float(spent) / float(calls)
    return float(stat.get("est_cost_usd") or 0.0)


def _pass_rate(stat: Mapping[str, Any]) -> float:
    n = float(stat.get("quality_obs") or 0)
    q = stat.get("mean_quality")
    if not n or q is None:
        return 0.5
    return (float(q) * n + 1.0) / (n + 2.0)


def _by_cost(tally: Any, stats: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The pool's models cheaper per call than the fallback, cheapest first, then the fallback."""
    fallback = tally.fallback
    top = _cost_per_call(stats.get(fallback, {}))
    names = sorted((n for n in stats if n != fallback and _cost_per_call(stats[n]) < top),
                   key=lambda n: _cost_per_call(stats[n]))
    return [*names, fallback]
