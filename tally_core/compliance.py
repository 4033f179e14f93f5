"""Per-org compliance rules: which providers and models an org's calls may use.

``Tally(models, org_policies={"eu-team": {"allowed_providers": ["azure", "mistral"]}})``
narrows every envelope of that org to what its rules allow, before anything
else looks at it: the policy, the fallback (compliance beats the configured
fallback: the best allowed model stands in), the holdout, shadow copies and
cascades all see only permitted models. A call whose own ``allowed_models``
/ ``allowed_providers`` leave nothing the org permits raises
``NoCandidateError`` naming the org and the rule; Tally never routes it to a
forbidden model instead.

>>> rules = OrgPolicies({"eu-team": {"allowed_providers": ["mistral", "azure"]}})
>>> from tally_core.envelope import Envelope
>>> rules.apply(Envelope(task_type="qa", org="eu-team")).allowed_providers
('azure', 'mistral')
>>> rules.apply(Envelope(task_type="qa", org="us-team")).allowed_providers is None
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tally_core.envelope import Envelope
from tally_core.errors import InvalidFieldError

__all__ = ["RULES", "OrgPolicies"]

RULES = ("allowed_models", "allowed_providers")


def _names(org: str, rule: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence | frozenset | set):
        raise InvalidFieldError(f"org_policies.{org}.{rule}",
                                f"must be a list of names, got {type(value).__name__}")
    names = tuple(sorted({v for v in value if isinstance(v, str) and v}))
    if len(names) != len(set(value)) or not names:
        raise InvalidFieldError(f"org_policies.{org}.{rule}",
                                "must be a non-empty list of non-empty strings")
    return names


class OrgPolicies:
    """The rules per org; ``apply`` narrows an envelope to them."""

    def __init__(self, policies: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> None:
        self._rules: dict[str, dict[str, tuple[str, ...]]] = {}
        if policies is None:
            return
        if not isinstance(policies, Mapping):
            raise InvalidFieldError("org_policies", "must be a mapping of org to its rules")
        for org, rules in policies.items():
            if not isinstance(org, str) or not org:
                raise InvalidFieldError("org_policies", f"org names must be strings, got {org!r}")
            if not isinstance(rules, Mapping) or not rules:
                raise InvalidFieldError(f"org_policies.{org}",
                                        f"must be a mapping with any of {', '.join(RULES)}")
            unknown = sorted(set(rules) - set(RULES))
            if unknown:
                raise InvalidFieldError(f"org_policies.{org}", f"unknown rule(s) {unknown}; "
                                        f"allowed: {', '.join(RULES)}")
            self._rules[org] = {rule: _names(org, rule, value) for rule, value in rules.items()}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def rules(self, org: str) -> dict[str, tuple[str, ...]] | None:
        """The rules of one org, or None."""
        found = self._rules.get(org)
        return dict(found) if found is not None else None

    def describe(self, org: str) -> str:
        found = self._rules.get(org)
        if not found:
            return ""
        return "; ".join(f"{rule}={list(names)}" for rule, names in found.items())

    def apply(self, env: Envelope) -> Envelope:
        """The envelope narrowed to its org's rules (the same object when it has none)."""
        found = self._rules.get(env.org)
        if not found:
            return env
        from tally_core.router import NoCandidateError  # the error routing raises

        update: dict[str, tuple[str, ...]] = {}
        for rule, allowed in found.items():
            asked = getattr(env, rule)
            kept = allowed if asked is None else tuple(n for n in asked if n in allowed)
            if not kept:
                raise NoCandidateError(
                    rule, f"org {env.org!r} allows only {list(allowed)}; this call asked for "
                    f"{list(asked or ())}: no permitted model can serve it")
            if kept != asked:
                update[rule] = kept
        return env.model_copy(update=update) if update else env
