"""TallyDecisionModel: Tally as the decision model of LangChain's ``ModelRouterMiddleware``.

``ModelRouterMiddleware(choices={...}, instructions=..., classifier=TallyDecisionModel(tally))``
asks its classifier one ``Choice`` question per agent run; Tally answers with
the cheapest choice that clears the floor for the run's envelope, without
reading the prompt. The answer carries the decision id
(``state["model_route"].decision_id``) so the run's outcome joins it:
``tally.telemetry(decision_id, success=..., quality=...)``. For a decision
per model call, use ``TallyMiddleware`` instead.

Needs ``langchain_core.decisions`` (newer ``langchain-core``); on an older one,
importing ``TallyDecisionModel`` raises an ImportError saying so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    # Only in newer langchain-core releases; the oldest we support has none (type-checked
    # there too, hence the ignores that are unused where the module exists).
    from langchain_core.decisions import (  # type: ignore[import-not-found,unused-ignore]
        BaseDecisionModel,
        Choice,
        ChoiceAnswer,
        ClassifierResponse,
        Question,
        State,
    )

    _HAVE_DECISIONS = True
except ImportError:  # pragma: no cover - depends on the installed langchain-core
    _HAVE_DECISIONS = False

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.messages.utils import count_tokens_approximately
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from tally_core import InvalidFieldError, Tally
from tally_langchain._common import DEFAULT_TASK_TYPE, LogOnce
from tally_langchain._routing import envelope_dict, invalid_field

__all__ = ["TallyChoiceAnswer", "TallyDecisionModel"]

_MISSING = (
    "TallyDecisionModel needs langchain_core.decisions (a newer langchain-core, "
    "as ModelRouterMiddleware does): pip install -U langchain-core langchain"
)

if _HAVE_DECISIONS:

    class TallyChoiceAnswer(ChoiceAnswer):  # type: ignore[misc,unused-ignore]
        """A ``ChoiceAnswer`` that remembers the Tally decision behind it."""

        decision_id: str | None = None
        """Join the run's outcome to it: ``tally.telemetry(decision_id, ...)``."""

    class TallyDecisionModel(BaseDecisionModel):  # type: ignore[misc,unused-ignore]
        """Answers ``Choice`` questions (a model to route to) with a Tally decision.

        Parameters
        ----------
        tally
            The ``Tally`` that routes and learns.
        routes
            ``{choice label: pool model name}`` where the labels of the question
            are not the pool's names (default: each label is a model name).
        envelope
            The runs' envelope fields (``{"task_type": "code-debug"}``);
            ``context_length`` is inferred from the state when unset.

        >>> from tally_core import ModelSpec, Tally
        >>> from langchain_core.decisions import Choice
        >>> pool = [ModelSpec(name="small", input_cost_per_mtok=0.1, output_cost_per_mtok=0.4),
        ...         ModelSpec(name="large", input_cost_per_mtok=5, output_cost_per_mtok=15)]
        >>> tally = Tally(pool, fallback="large", store=":memory:", seed=0, background=False)
        >>> router = TallyDecisionModel(tally=tally, envelope={"task_type": "qa-simple"})
        >>> answer = router.invoke({"state": "2 + 2?", "questions": {"route": Choice(
        ...     instructions="pick a model", criteria={"small": "easy", "large": "hard"})}})
        >>> answer.choices["route"].choice in {"small", "large"}
        True
        >>> tally.close()
        """

        model_config = ConfigDict(arbitrary_types_allowed=True)

        model: str = "tally"
        tally: Tally = Field(exclude=True)
        routes: dict[str, str] = Field(default_factory=dict)
        envelope: dict[str, Any] = Field(default_factory=dict)

        _warn: LogOnce = PrivateAttr(default_factory=LogOnce)
        _default: dict[str, Any] = PrivateAttr(default_factory=dict)

        def __init__(self, **kwargs: Any) -> None:
            try:
                super().__init__(**kwargs)
            except ValidationError as exc:
                raise invalid_field(exc, "TallyDecisionModel") from None

        @model_validator(mode="after")
        def _check(self) -> TallyDecisionModel:
            if not isinstance(self.tally, Tally):
                raise InvalidFieldError(
                    "tally", f"must be a Tally, got {type(self.tally).__name__}"
                )
            unknown = sorted(set(self.routes.values()) - set(self.tally.catalog.names))
            if unknown:
                raise InvalidFieldError(
                    "routes", f"{', '.join(map(repr, unknown))} not in the pool"
                )
            default = envelope_dict(self.envelope, "envelope")
            default.setdefault("task_type", DEFAULT_TASK_TYPE)
            self._default = default
            return self

        @property
        def _provider(self) -> str:
            return "tally"

        def _classify(self, state: State, questions: dict[str, Question]) -> ClassifierResponse:
            answers: dict[str, Any] = {}
            decision_id = None
            for qid, question in questions.items():
                if not isinstance(question, Choice):
                    raise ValueError(
                        f"TallyDecisionModel answers Choice questions (a model to route to); "
                        f"{qid!r} is a {type(question).__name__}"
                    )
                answer = self._choose(state, question)
                decision_id = decision_id or answer.decision_id
                answers[qid] = answer
            return ClassifierResponse(model=self.model, answers=answers, request_id=decision_id)

        def _choose(self, state: State, question: Choice) -> TallyChoiceAnswer:
            labels = list(question.criteria)
            pool = {label: self.routes.get(label, label) for label in labels}
            served = {name: label for label, name in pool.items() if name in self.tally.catalog}
            if not served:
                raise InvalidFieldError(
                    "routes",
                    f"none of the choices {labels} is a model in the Tally pool; "
                    "map them with routes={label: model}",
                )
            fallback = served.get(self.tally.fallback, labels[0])
            label, confidence, decision_id = fallback, 0.0, None
            try:
                env = dict(self._default)
                env.setdefault("context_length", count_tokens_approximately(_messages(state)))
                env["allowed_models"] = sorted(served)
                decision = self.tally.route(env)
                if decision.model in served:
                    label = served[decision.model]
                    confidence, decision_id = decision.confidence, decision.decision_id
            except Exception as exc:
                self._warn(
                    "route",
                    f"tally_langchain: routing failed; choosing {fallback!r} (fail open)",
                    exc,
                )
            return TallyChoiceAnswer(
                type="choice",
                choice=label,
                probabilities={x: 1.0 if x == label else 0.0 for x in labels},
                confidence=min(max(float(confidence), 0.0), 1.0),
                decision_id=decision_id,
            )

    def _messages(state: Any) -> list[BaseMessage]:
        """The messages anywhere in a decision state, for its size (never stored)."""
        if isinstance(state, BaseMessage):
            return [state]
        if isinstance(state, str):
            return [HumanMessage(state)]
        if isinstance(state, Mapping):
            return [m for v in state.values() for m in _messages(v)]
        if isinstance(state, Sequence):
            return [m for v in state for m in _messages(v)]
        return []

else:  # pragma: no cover - depends on the installed langchain-core

    def __getattr__(name: str) -> Any:
        if name in __all__:
            raise ImportError(_MISSING)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
