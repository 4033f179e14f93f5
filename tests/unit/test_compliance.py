"""Per-org compliance rules: enforced on every route, fallback and holdout included."""

from __future__ import annotations

import pytest

from tally_core import InvalidFieldError, NoCandidateError, Tally
from tally_core.compliance import OrgPolicies

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o", "claude-sonnet-4-5"]
EU = {"eu-team": {"allowed_providers": ["anthropic"]}}


@pytest.fixture
def tally():
    t = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=2, holdout=0.3,
              org_policies=EU)
    yield t
    t.close()


def test_an_orgs_calls_never_reach_a_forbidden_provider_fallback_and_holdout_included(tally):
    providers = {tally.catalog[n].provider for n in POOL}
    assert providers == {"openai", "anthropic"}
    seen = set()
    for floor in (None, 0.8, 0.99):
        for _ in range(300):
            d = tally.route(task_type="qa-simple", org="eu-team", quality_floor=floor)
            seen.add((d.model, d.phase))
            assert tally.catalog[d.model].provider == "anthropic", d.explain()
    assert any(phase == "fallback" for _, phase in seen)  # the holdout ran, compliantly
    # Another org is not limited.
    us = {tally.route(task_type="qa-simple", org="us-team").model for _ in range(200)}
    assert "gpt-4o" in us or "gpt-4o-mini" in us


def test_the_call_can_narrow_further_but_not_escape(tally):
    d = tally.route(task_type="qa-simple", org="eu-team", allowed_models=["claude-haiku-4-5"])
    assert d.model == "claude-haiku-4-5"
    with pytest.raises(NoCandidateError) as err:
        tally.route(task_type="qa-simple", org="eu-team", allowed_providers=["openai"])
    assert "eu-team" in str(err.value) and "anthropic" in str(err.value)
    assert err.value.field == "allowed_providers"


def test_a_pool_with_nothing_the_org_allows_names_the_org_and_its_rule():
    with Tally(["gpt-4o-mini", "gpt-4o"], store=":memory:",
               org_policies={"eu-team": {"allowed_providers": ["mistral"]}}) as t:
        with pytest.raises(NoCandidateError, match=r"org 'eu-team' \(its rules: "
                                                    r"allowed_providers=\['mistral'\]\)"):
            t.route(task_type="qa-simple", org="eu-team")
        assert t.route(task_type="qa-simple").model in ("gpt-4o-mini", "gpt-4o")


def test_shadow_copies_follow_the_rules_too(tally):
    # A shadow copy is a route pinned to the candidate: the org's rules refuse it.
    with pytest.raises(NoCandidateError):
        tally.route(task_type="qa-simple", org="eu-team", allowed_models=["gpt-4o-mini"])


@pytest.mark.parametrize(
    ("policies", "field"),
    [({"eu": {"allowed_regions": ["eu"]}}, "org_policies.eu"),
     ({"eu": {"allowed_providers": "azure"}}, "org_policies.eu.allowed_providers"),
     ({"eu": {"allowed_providers": []}}, "org_policies.eu.allowed_providers"),
     ({"eu": {}}, "org_policies.eu"),
     ([("eu", {})], "org_policies")],
)
def test_bad_rules_name_the_field(policies, field):
    with pytest.raises(InvalidFieldError) as err:
        OrgPolicies(policies)
    assert err.value.field == field
