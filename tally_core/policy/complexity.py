"""ComplexityThreshold: the seed article's ``threshold_route(complexity, intent)``.

A task type belongs to a group (``THRESHOLD_GROUPS``; ``default`` for the
rest), and each group maps a complexity score to a price tier
(``THRESHOLD_RULES``: ``[(complexity below, tier)]``, the last entry catches
the rest). A tier is a position in the candidates sorted by price:
``economy`` the cheapest, ``standard`` the second cheapest, ``premium`` the
second dearest, ``top`` the dearest (``tier_position``), unless ``tiers``
names the model of a tier. It never learns.

The call's complexity comes as a level (the envelope's
``complexity_level``: a score is bucketed by thirds, so a routing plan is
cached per level, not per score); a level is read as the score in its
middle (1/6, 1/2, 5/6), which gives the article's tiers for each third. A
call without a complexity is routed by the floor, as ``StaticThreshold``.

The floor holds as in every policy: the base drops a model whose evidence
shows it below the floor, and the tier then moves to the next dearer model
still allowed, never a cheaper one.

>>> from tally_core.learning import EMPTY_VIEW
>>> from tally_core.policy.base import Candidate
>>> p = ComplexityThreshold()
>>> cands = [Candidate(n, c, EMPTY_VIEW) for n, c in
...          (("flash", 0.0004), ("mini", 0.001), ("sonnet", 0.01), ("4o", 0.02))]
>>> [p.plan(cands, 0.8, "4o", task_type="reasoning", complexity=c).exploit
...  for c in ("low", "medium", "high")]
['mini', 'sonnet', '4o']
>>> [p.plan(cands, 0.8, "4o", task_type="translation", complexity=c).exploit
...  for c in ("low", "medium", "high")]
['flash', 'mini', 'sonnet']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tally_core.errors import InvalidFieldError
from tally_core.policy.threshold import StaticThreshold

__all__ = [
    "LEVEL_SCORES",
    "THRESHOLD_GROUPS",
    "THRESHOLD_RULES",
    "TIERS",
    "ComplexityThreshold",
    "rule_tier",
    "tier_position",
]

TIERS = ("economy", "standard", "premium", "top")

#: The article's rules: group -> [(complexity below, tier)], the last entry
#: catching the rest. Its models become positions by price: gemini-flash
#: ``economy``, gpt-4o-mini ``standard``, claude-sonnet ``premium`` and gpt-4o
#: ``top`` (in its "simple" group gpt-4o is the dearest it names, which in a
#: pool with a dearer model is ``premium``).
THRESHOLD_RULES: dict[str, list[tuple[float, str]]] = {
    # "These tasks rarely need premium models"
    "simple": [(0.7, "standard"), (2.0, "premium")],
    # "These tasks are quality-sensitive"
    "quality-sensitive": [(0.3, "standard"), (0.6, "premium"), (2.0, "top")],
    "default": [(0.4, "economy"), (0.7, "standard"), (2.0, "premium")],
}
THRESHOLD_GROUPS: dict[str, str] = {
    "formatting": "simple",
    "classification": "simple",
    "extraction": "simple",
    "code-generation": "quality-sensitive",
    "reasoning": "quality-sensitive",
    # Not in the article's two lists; they are as hard as code and reasoning.
    "code-debug": "quality-sensitive",
    "architecture-design": "quality-sensitive",
}
#: The score a complexity level stands for: the middle of its third.
LEVEL_SCORES: dict[str, float] = {"low": 1 / 6, "medium": 1 / 2, "high": 5 / 6}


def tier_position(tier: str, n: int) -> int:
    """Where ``tier`` sits among ``n`` models sorted by price (0: the cheapest).

    >>> [tier_position(t, 6) for t in TIERS], [tier_position(t, 1) for t in TIERS]
    ([0, 1, 4, 5], [0, 0, 0, 0])
    """
    return {"economy": 0, "standard": min(1, n - 1), "premium": max(n - 2, 0), "top": n - 1}[tier]


def rule_tier(rules: Sequence[tuple[float, str]], score: float) -> str:
    """The tier of the first rule whose bound is above ``score`` (else the last)."""
    return next((t for bound, t in rules if score < bound), rules[-1][1])


class ComplexityThreshold(StaticThreshold):
    """Route by (task group, complexity) to a price tier; never learns.

    Parameters
    ----------
    rules
        Group -> ``[(complexity below, tier)]`` with tiers from ``TIERS``;
        must hold a ``default`` group. The article's by default.
    groups
        Task type -> group; task types not in it are ``default``.
    tiers
        Tier -> model, as the article names its models. A tier not named
        here (or a model not in the pool) is a position by price; positions
        follow the realised cost per call, which can reorder models of
        close prices as evidence comes in, so naming them keeps tiers fixed.
    cheap_below, premium_from
        ``StaticThreshold``'s floor tiers, for calls without a complexity.
    """

    def __init__(
        self,
        *,
        rules: Mapping[str, Sequence[tuple[float, str]]] | None = None,
        groups: Mapping[str, str] | None = None,
        tiers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        rules = THRESHOLD_RULES if rules is None else rules
        if not isinstance(rules, Mapping) or "default" not in rules:
            raise InvalidFieldError("rules", "must be a mapping of groups that holds 'default'")
        checked: dict[str, tuple[tuple[float, str], ...]] = {}
        for group, entries in rules.items():
            try:
                pairs = tuple((float(b), str(t)) for b, t in entries)
            except (TypeError, ValueError):
                raise InvalidFieldError(
                    "rules", f"group {group!r} must be a list of (complexity below, tier)"
                ) from None
            bad = [t for _, t in pairs if t not in TIERS]
            if not pairs or bad:
                raise InvalidFieldError(
                    "rules",
                    f"group {group!r}: tiers must be {', '.join(TIERS)}, got {bad or 'none'}",
                )
            checked[str(group)] = pairs
        if groups is None:  # the article's groups, as far as the rules hold them
            groups = {t: g for t, g in THRESHOLD_GROUPS.items() if g in checked}
        groups = dict(groups)
        unknown = sorted({g for g in groups.values() if g not in checked})
        if unknown:
            raise InvalidFieldError("groups", f"groups without rules: {', '.join(unknown)}")
        tiers = dict(tiers or {})
        bad_tiers = sorted(set(tiers) - set(TIERS))
        if bad_tiers:
            raise InvalidFieldError("tiers", f"must name tiers of {', '.join(TIERS)}, got "
                                    f"{bad_tiers}")
        self.rules = checked
        self.groups = groups
        self.tiers = tiers

    def _position(
        self, ranked: Sequence[str], bar: float, task_type: str | None, complexity: str | None
    ) -> tuple[int, str]:
        score = LEVEL_SCORES.get(complexity) if complexity is not None else None
        if score is None:
            return super()._position(ranked, bar, task_type, complexity)
        group = self.groups.get(task_type or "", "default")
        tier = rule_tier(self.rules.get(group, self.rules["default"]), score)
        why = f"complexity {complexity}, group {group}: tier {tier}"
        named = self.tiers.get(tier)
        if named is not None and named in ranked:
            return list(ranked).index(named), why
        return tier_position(tier, len(ranked)), why
