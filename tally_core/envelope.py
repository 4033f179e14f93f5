"""The envelope: the shape of one task, never its content."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
)

from tally_core._brief import brief
from tally_core.errors import InvalidFieldError

__all__ = [
    "CONTEXT_BUCKETS",
    "KNOWN_TASK_TYPES",
    "STRUCTURE_TYPES",
    "Envelope",
    "coerce_envelope",
    "complexity_level",
    "envelope_cache_key",
    "normalise_task_type",
    "parse_task_type",
]

KNOWN_TASK_TYPES = (
    "code-debug",
    "code-generation",
    "code-review",
    "data-analysis",
    "creative-writing",
    "summarisation",
    "qa-simple",
    "architecture-design",
    "classification",
    "extraction",
    "reasoning",
    "translation",
    "formatting",
    "conversation",
)
STRUCTURE_TYPES = ("prose", "code", "json", "list", "mixed")

# Bucket -> (smallest payload in tokens, payload assumed for cost estimates).
# A bucket is a range; the context filter needs only its lower edge, the cost
# estimate a typical size inside it.
CONTEXT_BUCKETS: dict[str, tuple[int, int]] = {
    "short": (0, 1_000),
    "medium": (4_001, 12_000),
    "long": (32_001, 64_000),
    "very-long": (128_001, 200_000),
}
_BUCKET_EDGES = ((4_000, "short"), (32_000, "medium"), (128_000, "long"))

_ALIASES = {
    "summarization": "summarisation",
    "summarize": "summarisation",
    "summarise": "summarisation",
    "summary": "summarisation",
    "qa": "qa-simple",
    "simple-qa": "qa-simple",
    "codegen": "code-generation",
    "code-gen": "code-generation",
    "debug": "code-debug",
    "debugging": "code-debug",
    "code-debugging": "code-debug",
    "creative": "creative-writing",
    "chat": "conversation",
    "architecture": "architecture-design",
    "data-analytics": "data-analysis",
    "analysis": "data-analysis",
    "classify": "classification",
    "extract": "extraction",
    "format": "formatting",
    "translate": "translation",
}
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}$")


def normalise_task_type(value: str) -> str:
    """Fold spelling variants of a task type onto one key.

    >>> normalise_task_type("Code_Generation")
    'code-generation'
    >>> normalise_task_type("summarization")
    'summarisation'
    """
    slug = re.sub(r"[\s_]+", "-", value.strip().lower())
    slug = _ALIASES.get(slug, slug)
    if not _SLUG.match(slug):
        raise ValueError(
            f"{brief(value)} is not a task type: use one of {', '.join(KNOWN_TASK_TYPES)} "
            "or a custom slug of letters, digits and '-' (at most 64 characters)"
        )
    return slug


def parse_task_type(value: Any) -> str:
    """``normalise_task_type`` for a value a caller passed as ``task_type``:
    anything that is not a task type raises ``InvalidFieldError("task_type")``."""
    if not isinstance(value, str):
        raise InvalidFieldError("task_type", f"must be a string, got {brief(value)}")
    try:
        return normalise_task_type(value)
    except ValueError as exc:
        raise InvalidFieldError("task_type", str(exc)) from None


def context_bucket(tokens: int) -> str:
    """The bucket an exact token count falls in.

    >>> context_bucket(3_000), context_bucket(50_000), context_bucket(500_000)
    ('short', 'long', 'very-long')
    """
    for edge, name in _BUCKET_EDGES:
        if tokens <= edge:
            return name
    return "very-long"


def complexity_level(score: float) -> str:
    """The bucket of a 0-1 complexity score: ``low``, ``medium`` or ``high`` (thirds).

    >>> complexity_level(0.1), complexity_level(0.5), complexity_level(0.9)
    ('low', 'medium', 'high')
    """
    return "low" if score < 1 / 3 else ("medium" if score < 2 / 3 else "high")


def _tools_bucket(n: int) -> str:
    return "0" if n == 0 else ("1-3" if n <= 3 else "4+")


class Envelope(BaseModel):
    """The shape of one task, never its content.

    Parameters
    ----------
    task_type
        What kind of work this is. One of ``KNOWN_TASK_TYPES`` or a custom
        slug; spelling variants fold onto one key.
    structure_type
        Output format: ``prose | code | json | list | mixed``.
    context_length
        ``short | medium | long | very-long`` or an exact token count. Models
        whose context window cannot hold it are filtered out.
    tools_used
        Number of tools in scope. Above 0, models without tool calling are
        filtered out and outcomes are learned in a cell of their own.
    time_sensitive
        True picks, among models that clear the floor, a faster one even when
        it costs more.
    quality_floor
        Minimum acceptable quality, 0-1. A hard constraint. ``None`` means
        parity with the best observed model for the task type.
    org
        Tenant. Each org learns on its own state.
    tags
        Free labels recorded in the ledger (never prompt text).
    max_cost_usd
        Drop candidates whose estimated cost for this call is higher.
    allowed_models, allowed_providers
        Compliance: only these models / providers may be chosen.
    expected_output_tokens
        Used for cost estimates; defaults to what was observed for the task.
    complexity
        How hard the task is: 0 (trivial) to 1, or ``low | medium | high``.
        ``complexity_level`` gives the bucket either way.

    >>> Envelope(task_type="summarization").task_type
    'summarisation'
    >>> Envelope(task_type="code-debug", context_length=50_000).context_bucket
    'long'
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    task_type: str
    structure_type: Literal["prose", "code", "json", "list", "mixed"] = "prose"
    context_length: Literal["short", "medium", "long", "very-long"] | StrictInt = "short"
    tools_used: StrictInt = Field(default=0, ge=0, le=10_000)
    time_sensitive: StrictBool = False
    quality_floor: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    org: str = "default"
    tags: tuple[str, ...] = ()
    max_cost_usd: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    allowed_models: tuple[str, ...] | None = None
    allowed_providers: tuple[str, ...] | None = None
    expected_output_tokens: StrictInt | None = Field(default=None, ge=0, le=10_000_000)
    complexity: Literal["low", "medium", "high"] | float | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _raise_from(exc) from None

    _cell: str = PrivateAttr(default="")
    _tokens: int = PrivateAttr(default=0)
    _tokens_exact: bool = PrivateAttr(default=False)
    _plan_key: tuple[Any, ...] = PrivateAttr(default=())
    _task_key: tuple[str, str] = PrivateAttr(default=("", ""))

    @field_validator("task_type", mode="before")
    @classmethod
    def _normalise_task(cls, v: Any) -> Any:
        if isinstance(v, str):
            return normalise_task_type(v)
        return v

    @field_validator("structure_type", mode="before")
    @classmethod
    def _lower_structure(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("context_length", mode="before")
    @classmethod
    def _check_context(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be short, medium, long, very-long or a token count")
        if isinstance(v, str):
            v = v.strip().lower().replace("_", "-").replace(" ", "-")
            if v == "verylong":
                v = "very-long"
        if isinstance(v, int) and not 0 <= v <= 100_000_000:
            raise ValueError(f"token count must be between 0 and 100000000, got {v}")
        return v

    @field_validator("quality_floor", "max_cost_usd", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number, not a bool")
        return v

    @field_validator("complexity", mode="before")
    @classmethod
    def _check_complexity(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v.strip().lower()
        if isinstance(v, bool) or (
            isinstance(v, (int, float)) and not 0.0 <= v <= 1.0  # NaN fails this too
        ):
            raise ValueError("out of range")
        return v

    @field_validator("org")
    @classmethod
    def _check_org(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(
                "must be 1-128 characters of letters, digits and _.:/@- "
                "starting with a letter or digit"
            )
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _check_tags(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = (v,)
        if isinstance(v, (list, tuple, set, frozenset)):
            if len(v) > 32:
                raise ValueError("at most 32 tags")
            for t in v:
                if not isinstance(t, str) or not 0 < len(t) <= 64:
                    raise ValueError("each tag must be a string of 1-64 characters")
            return tuple(v)
        return v

    @field_validator("allowed_models", "allowed_providers", mode="before")
    @classmethod
    def _to_tuple(cls, v: Any) -> Any:
        if isinstance(v, str):
            return (v,)
        if isinstance(v, (list, set, frozenset)):
            return tuple(v)
        return v

    def model_post_init(self, __context: Any) -> None:
        if isinstance(self.context_length, int):
            bucket = context_bucket(self.context_length)
            self._tokens, self._tokens_exact = self.context_length, True
        else:
            bucket = self.context_length
            self._tokens = CONTEXT_BUCKETS[bucket][1]
        self._cell = (
            f"{self.structure_type}|{bucket}|{_tools_bucket(self.tools_used)}"
            f"|{'t' if self.time_sensitive else 'n'}"
        )
        level = self.complexity_level
        if level is not None:
            # Its own cell: the router backs it off to the task type while it
            # is sparse, like the others. No complexity, the same key as before.
            self._cell += "|" + level
        # Everything a routing plan depends on besides learned state. Exact
        # token counts enter only where they change the plan (cost caps);
        # the context filter keys on them separately.
        exact = self._tokens if (self._tokens_exact and self.max_cost_usd is not None) else None
        self._task_key = (self.org, self.task_type)
        self._plan_key = (
            self.org,
            self.task_type,
            self._cell,
            self.quality_floor,
            exact,
            self.expected_output_tokens,
            self.max_cost_usd,
            self.allowed_models,
            self.allowed_providers,
        )

    @property
    def context_bucket(self) -> str:
        """The context bucket, also when an exact token count was given."""
        return cast("str", self._priv["_cell"].split("|")[1])

    @property
    def complexity_level(self) -> str | None:
        """``low``, ``medium`` or ``high`` (a 0-1 score bucketed by thirds), or None.

        >>> Envelope(task_type="qa", complexity=0.8).complexity_level
        'high'
        """
        c = self.complexity
        if c is None or isinstance(c, str):
            return c
        return complexity_level(c)

    @property
    def cell(self) -> str:
        """Key of the context cell this envelope's outcomes are learned in."""
        return cast("str", self._priv["_cell"])

    @property
    def input_tokens(self) -> int:
        """Payload size used for cost estimates (exact, or typical for the bucket)."""
        return cast("int", self._priv["_tokens"])

    @property
    def min_context_tokens(self) -> int:
        """Smallest context window a model needs to take this payload."""
        priv = self._priv
        if priv["_tokens_exact"]:
            return cast("int", priv["_tokens"])
        return CONTEXT_BUCKETS[self.context_bucket][0]

    @property
    def tokens_exact(self) -> bool:
        """Whether ``context_length`` was an exact token count (not a bucket)."""
        return cast("bool", self._priv["_tokens_exact"])

    @property
    def task_key(self) -> tuple[str, str]:
        """``(org, task_type)``: the learned state this envelope reads and writes."""
        return cast("tuple[str, str]", self._priv["_task_key"])

    @property
    def plan_key(self) -> tuple[Any, ...]:
        """Everything a routing plan depends on besides learned state."""
        return cast("tuple[Any, ...]", self._priv["_plan_key"])

    @property
    def _priv(self) -> dict[str, Any]:
        # Pydantic serves private attributes through __getattr__ (~2.5 us per
        # read); routing reads several per call, so read its dict directly.
        return self.__pydantic_private__  # type: ignore[return-value]


_FIELDS = tuple(Envelope.model_fields)
_ALLOWED_HINTS = {
    "structure_type": "allowed: " + ", ".join(STRUCTURE_TYPES),
    "context_length": "allowed: short, medium, long, very-long or a token count >= 0",
    "complexity": "allowed: a number from 0 to 1, or low, medium, high",
}


def _raise_from(exc: ValidationError) -> InvalidFieldError:
    err = exc.errors(include_url=False)[0]
    loc = err.get("loc") or ("envelope",)
    field = str(loc[0])
    if err["type"] == "extra_forbidden":
        return InvalidFieldError(field, "unknown field; allowed fields: " + ", ".join(_FIELDS))
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    hint = _ALLOWED_HINTS.get(field)
    if hint and hint not in msg:
        msg = f"{msg} ({hint})"
    if len(msg) > 300:
        msg = msg[:297] + "..."
    return InvalidFieldError(field, f"{msg}, got {brief(err.get('input'))}")


def coerce_envelope(value: Envelope | Mapping[str, Any]) -> Envelope:
    """An ``Envelope`` from an envelope or a plain mapping, or ``InvalidFieldError``.

    >>> coerce_envelope({"task_type": "qa"}).task_type
    'qa-simple'
    >>> coerce_envelope({"task_type": "qa", "colour": "red"})
    Traceback (most recent call last):
    ...
    tally_core.errors.InvalidFieldError: colour: unknown field; allowed fields: ...
    """
    if isinstance(value, Envelope):
        return value
    if not isinstance(value, Mapping):
        raise InvalidFieldError(
            "envelope", f"must be an Envelope or a mapping, got {type(value).__name__}"
        )
    for k in value:
        if not isinstance(k, str):
            raise InvalidFieldError("envelope", f"field names must be strings, got {brief(k)}")
    for k, v in value.items():
        if not _shallow(v):
            raise InvalidFieldError(
                k,
                "must be a string, number, bool, None or a flat list of those "
                f"(nested at most {_MAX_DEPTH} levels), got {brief(v)}",
            )
    try:
        return Envelope(**value)
    except InvalidFieldError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:  # never a raw error for bad input
        raise InvalidFieldError("envelope", f"{type(exc).__name__}: {brief(str(exc))}") from None


_MAX_DEPTH = 2
_SCALARS = (str, int, float, bool, type(None))


def _shallow(value: Any, depth: int = 0) -> bool:
    """A value no envelope field nests deeper than (a scalar, or a flat
    list/tuple/set of scalars): checked before pydantic sees it, so hostile
    nesting never recurses."""
    if isinstance(value, _SCALARS) or isinstance(value, Envelope):
        return True
    if depth >= _MAX_DEPTH - 1 or not isinstance(value, (list, tuple, set, frozenset)):
        return False
    if len(value) > 10_000:
        return False
    return all(_shallow(v, depth + 1) for v in value)


def envelope_cache_key(data: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A cache key for a mapping of envelope fields, or None if it should
    not be cached. Keyed on each value's type as well as its value:
    ``True == 1 == 1.0`` hash alike, but ``Envelope`` accepts one and rejects
    another, so a cache keyed on values alone would let through what
    ``Envelope()`` refuses, depending on what came before.

    >>> envelope_cache_key({"tools_used": 1}) == envelope_cache_key({"tools_used": True})
    False
    """
    key: list[Any] = []
    for k, v in data.items():
        t = type(v)
        if t is tuple:
            if not all(type(x) is str for x in v):
                return None
        elif t not in _KEY_TYPES:
            return None
        key.append((k, t, v))
    return tuple(key)


_KEY_TYPES = frozenset({str, int, float, bool, type(None)})
