"""The envelope of a LiteLLM request: given in ``metadata["tally"]`` or inferred.

Only the request's shape is read (sizes, counts, the output format), never
its text: the envelope is what Tally stores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tally_core import Envelope, InvalidFieldError
from tally_core.envelope import CONTEXT_BUCKETS
from tally_core.infer import infer_fields

__all__ = ["ENVELOPE_KEY", "count_tokens", "infer", "request_envelope"]

ENVELOPE_KEY = "tally"
# Largest payload still in the "short" bucket.
_SHORT_MAX = CONTEXT_BUCKETS["medium"][0] - 1
# Per-message framing tokens the chat format adds (role, separators).
_PER_MESSAGE = 4
_JSON_FORMATS = ("json_object", "json_schema", "json")


def _text_bytes(messages: Sequence[Any]) -> int | None:
    """An upper bound on the messages' tokens, or None when only a tokenizer can tell.

    A byte-level BPE token covers at least one byte, so the UTF-8 size plus
    the framing bounds the token count from above.
    """
    total = 3
    for m in messages:
        if not isinstance(m, Mapping):
            return None
        total += _PER_MESSAGE
        content = m.get("content")
        if content is None:
            pass
        elif isinstance(content, str):
            total += len(content) if content.isascii() else len(content.encode("utf-8"))
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, Mapping) else None
                if not isinstance(text, str):
                    return None  # an image, audio, a file: ask the tokenizer
                total += len(text.encode("utf-8"))
        else:
            return None
        for key in ("tool_calls", "function_call"):
            if m.get(key):
                total += len(json.dumps(m[key], default=str))
    return total


def count_tokens(messages: Sequence[Any], tools: Sequence[Any] | None) -> int:
    """Input tokens of a chat request by LiteLLM's token counter (cl100k by default)."""
    import litellm

    n = litellm.token_counter(messages=list(messages), tools=list(tools) if tools else None)
    return int(n)


def _context_length(messages: Sequence[Any] | None, tools: Sequence[Any] | None) -> str | int:
    if not messages:
        return "short"
    bound = _text_bytes(messages)
    if bound is not None and tools:
        bound += len(json.dumps(list(tools), default=str))
    if bound is not None and bound <= _SHORT_MAX:
        # Certainly short: the bucket is all routing needs, and it skips the
        # tokenizer (about 60 us a call, 2% of LiteLLM's own per-call cost).
        return "short"
    try:
        n = count_tokens(messages, tools)
    except Exception:  # a message shape the counter does not know
        n = 0
    if n <= 0 and bound is not None:
        n = bound // 4
    return max(n, 0) if n else "short"


def _structure(response_format: Any) -> str | None:
    if response_format is None:
        return None
    if isinstance(response_format, type):
        return "json"  # a pydantic model: structured output
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if isinstance(kind, str) and kind.lower() in _JSON_FORMATS:
            return "json"
    return None


def infer(messages: Sequence[Any] | None, request_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Envelope fields read off a request: context length, tools, output format.

    >>> infer([{"role": "user", "content": "hi"}],
    ...       {"tools": [{"type": "function", "function": {"name": "f"}}],
    ...        "response_format": {"type": "json_object"}})
    {'context_length': 'short', 'tools_used': 1, 'structure_type': 'json'}
    """
    tools = request_kwargs.get("tools") or request_kwargs.get("functions")
    tools = tools if isinstance(tools, Sequence) and not isinstance(tools, str) else None
    out: dict[str, Any] = {"context_length": _context_length(messages, tools)}
    if tools:
        out["tools_used"] = len(tools)
    structure = _structure(request_kwargs.get("response_format"))
    if structure is not None:
        out["structure_type"] = structure
    return out


def _hashable(data: dict[str, Any]) -> dict[str, Any]:
    # Tally caches envelopes by their items: lists would defeat the cache.
    return {k: tuple(v) if isinstance(v, (list, set, frozenset)) else v for k, v in data.items()}


def request_envelope(
    defaults: Mapping[str, Any],
    given: Any,
    messages: Sequence[Any] | None,
    request_kwargs: Mapping[str, Any],
    *,
    infer_task: bool = True,
    on_infer_error: Callable[[BaseException], None] | None = None,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The envelope for one request, as a mapping ``Tally.route`` accepts, and
    the names of the fields inferred from its messages.

    Precedence, lowest first: the strategy's defaults (``task_type`` and
    ``default_envelope``), what the request shows (``infer``), the task type
    and complexity read off the messages (``tally_core.infer``, unless
    ``infer_task`` is False; a low-confidence read keeps the default task
    type), then what the caller gave in ``metadata["tally"]``: a mapping of
    envelope fields, an ``Envelope``, or a task type string. Inference that
    fails is skipped (``on_infer_error`` hears of it): the call is routed
    on the rest.

    >>> env, inferred = request_envelope({"task_type": "general"}, None,
    ...     [{"role": "user", "content": "Translate 'good night' into Italian."}], {})
    >>> env["task_type"], inferred
    ('translation', ('task_type', 'complexity'))
    >>> request_envelope({"task_type": "general"}, "qa", [{"role": "user", "content": "hi"}],
    ...                  {}, infer_task=False)
    ({'task_type': 'qa', 'context_length': 'short'}, ())
    """
    data = dict(defaults)
    data.update(infer(messages, request_kwargs))
    if given is None:
        fields: Mapping[str, Any] = {}
    elif isinstance(given, str):
        fields = {"task_type": given}
    elif isinstance(given, Envelope):
        fields = given.model_dump(exclude_unset=True)
    elif isinstance(given, Mapping):
        fields = given
    else:
        raise InvalidFieldError(
            "metadata.tally",
            f"must be a mapping of envelope fields, an Envelope or a task type, "
            f"got {type(given).__name__}",
        )
    inferred: tuple[str, ...] = ()
    if infer_task and messages:
        tools = request_kwargs.get("tools") or request_kwargs.get("functions")
        try:
            guess, inferred = infer_fields(
                messages, fields, tools=tools,
                response_format=request_kwargs.get("response_format"),
                default=str(defaults.get("task_type", "general")),
            )
        except Exception as exc:  # a message shape nobody foresaw: route without it
            if on_infer_error is not None:
                on_infer_error(exc)
            guess, inferred = {}, ()
        data.update(guess)
    data.update(fields)
    return _hashable(data), inferred
