"""Task type and complexity inferred from a call's messages, in-process.

``infer_task`` reads a bounded window of the last user turn (its start and
its end) and of the system prompt, turns it into a few hundred binary
features, and scores them with a small linear model that the project trains
on prompts it wrote itself (``tools/train_infer.py`` rebuilds
``tally_core/data/infer_model.json`` from ``tests/data/``). No network, no
download, no state: the text is read, scored and dropped. Nothing derived
from it leaves this module except the task type, two numbers and the names
of the rule features that decided (``Inference.signals``), never a word of
the prompt.

The features are of two kinds: hand-written rule groups (``k:translate``
fires on "translate", "traduis", "übersetze", "翻译" ...; ``x:fence`` on a
code fence) and the words of a fixed vocabulary learned from the training
set. Only words already in the vocabulary are looked at, with set
intersections, so the cost is bounded by the window, not by the prompt.

>>> r = infer_task([{"role": "user", "content": "Translate 'good morning' into German."}])
>>> r.task_type, r.confidence > 0.5
('translation', True)
>>> infer_task([]).task_type
'general'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import chain
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import numpy as np

from tally_core.envelope import complexity_level, normalise_task_type

__all__ = [
    "read_complexity_features",
    "CONFIDENCE_THRESHOLD",
    "Inference",
    "extract_features",
    "infer_fields",
    "infer_complexity",
    "infer_task",
    "preload",
]

# Characters read from the start and from the end of the last user turn, and
# from the start of the system prompt: instructions sit at the edges of a
# turn ("Summarise this: <paste>", "<paste> ... what's wrong here?"). Every
# labelled prompt fits in 300 + 150 (the longest has 372 characters); a head
# of 400 read no better on long prompts and cost ~20% more, one of 240 read
# fewer instructions right (tools/train_infer.py --report).
HEAD_CHARS = 300
TAIL_CHARS = 150
SYSTEM_CHARS = 300
# Messages looked at from the end for the last user turn (a long agent
# transcript of tool calls must not cost more than a short chat).
_LAST_MESSAGES = 16
_MAX_PARTS = 8
# Words of the window that form bigrams (the opening and closing phrase).
_BIGRAM_WORDS = 16
_TRIGRAM_WORDS = 10
CONFIDENCE_THRESHOLD = 0.30

# Rule groups: word forms (any language) that signal an intent. The model
# learns how much each group counts for each task type; the groups are what
# carries it to prompts whose words it never saw.
_GROUPS: dict[str, str] = {
    "translate": (
        "translate translated translating translation translations translator traduis "
        "traduire traduction traduce traducir traduzca traduza traduzir tradurre traduci "
        "übersetze übersetzen übersetzung übersetzt 翻译 翻訳 번역 localise localize "
        "localisation localization render say"
    ),
    "lang": (
        "english spanish french german italian portuguese japanese korean chinese mandarin "
        "thai arabic hebrew farsi russian hindi dutch polish turkish swedish greek "
        "anglais inglés ingles français francés francese allemand alemán deutsch englisch "
        "französische französisch spanisch espagnol español italien italiano englische "
        "japonais 英文 中文 日本語 영어 brazilian"
    ),
    "summarise": (
        "summarise summarize summary summaries summarising summarizing summarised "
        "summarized sum tldr tl gist condense condensed recap brief shorten shorter "
        "boil takeaways synthesise synthesize synopsis digest overview résume résumer "
        "résumé resumen resume resumir zusammen zusammenfassen zusammenfassung fasse "
        "riassumi abstract"
    ),
    "review": (
        "review reviewing reviewer critique feedback approve merge merging pr diff "
        "idiomatic readability naming audit flag smell smells solid pep lgtm "
        "improvements improve nit push"
    ),
    "debug": (
        "error errors exception traceback crash crashes crashed crashing fails failing "
        "failed bug bugs broken hang hangs hanging deadlock deadlocks segfault leak "
        "leaks warning warns warnings stuck undefined nonetype keyerror indexerror "
        "typeerror nameerror syntaxerror valueerror attributeerror modulenotfounderror "
        "importerror referenceerror exc_bad_access econnreset crashloopbackoff "
        "heisenbug fix wrong won't doesn't isn't compile 137 debug debugging "
        "intermittently reproduce"
    ),
    "codegen": (
        "write implement implementing create build generate scaffold code function "
        "functions class script component endpoint snippet one-liner regex dockerfile "
        "program library module cli hook tests method workflow app query migration "
        "code up"
    ),
    "proglang": (
        "python javascript typescript js ts java go golang rust c c++ cpp c# csharp "
        "kotlin swift ruby php sql bash shell react vue jsx django flask fastapi node "
        "express pandas css html yaml terraform docker kubernetes postgres postgresql "
        "redis spark ios android pytest jest npm git"
    ),
    "classify": (
        "classify classifying classification categorise categorize categorisation "
        "category categories label labels tag sentiment spam ham positive negative "
        "neutral toxic toxicity intent urgent klassifiziere classifie classe clasifica "
        "clasificar assign queue taxonomy phishing moderation"
    ),
    "extract": (
        "extract extracting extraction pull grab parse capture identify mentioned "
        "fields entities saca extrais extrahiere find list get records record tuples "
        "schema"
    ),
    "reason": (
        "prove proof logic logical logically deduce deduction puzzle step solve why "
        "therefore valid validity conclusion probability likely minimum induction "
        "razona razonar begründe riddle knights knaves argument argue assumptions "
        "think reason reasoning"
    ),
    "format": (
        "format formatted formatting reformat convert markdown table csv json yaml xml "
        "html latex indentation indent pretty-print prettify capitalise capitalize "
        "capitalisation uppercase lowercase bullet numbered alphabetically iso apa mla "
        "wrap punctuation normalise normalize consistently webvtt bibtex checklist "
        "spaces"
    ),
    "chat": (
        "hi hello hey heya thanks thank thx lol haha chat talk vent feeling feel how's "
        "morning night bonjour hola ça qué tal charlar discuter bye later weekend ugh "
        "cool nice okay ok lonely friend"
    ),
    "question": (
        "what what's who whom when where which how many much long capital default "
        "boiling cuál quelle quel wer wann wo dónde 什么 何"
    ),
    "creative": (
        "poem poems poetry story stories haiku limerick lyrics song slogan toast tale "
        "fiction novel novella chapter screenplay sonnet sonnets villanelle dialogue "
        "character characters fantasy myth joke bedtime gedicht poème cuento histoire "
        "rhyme verse narrator plot scene fun name"
    ),
    "data": (
        "data dataset datasets mean median average standard deviation correlation "
        "regression trend significant statistically outliers outlier cohort cohorts "
        "churn conversion conversions rate revenue metrics forecast distribution "
        "percentile kpi nps analyse analyze analysis analiza analysez datos données "
        "signups sales survey spend numbers percent percentage total column values "
        "largest smallest count"
    ),
    "arch": (
        "design architecture architect system scalable scale microservices monolith "
        "database caching cache queue kafka rabbitmq balancer multi-region trade-offs "
        "components platform services infrastructure sharding replication cdn "
        "diseñarías arquitectura architektur schema sync multi-tenant backend"
    ),
}
_PHRASES: dict[str, str] = {
    "translate": "how do you say|how would i say|how to say|what does|in english|into english",
    "summarise": "sum up|key points|main points|short version|boil down|main ideas",
    "chat": "how are you|nice to meet|good morning|good night|see you|long time|just chat",
    "question": "what is|who is|who wrote|who painted|how many|how long|what's the",
    "reason": "step by step|how much|is it possible|explain why|if all",
    "debug": "not working|doesn't work|won't compile|what's wrong|why does|fails with",
    "review": "code review|best practice|pull request|look over|push back|before i merge",
    "codegen": "write a|write me|give me a|can you write|code up|need a",
    "creative": "write a poem|write a story|short story|come up with",
    "format": "title case|numbered list|bullet list|markdown table|one per line",
}
_COMPLEXITY_CUES: dict[str, str] = {
    # Words that ask for depth, many constraints, rigour or scale.
    "c:rigour": (
        "prove proof correctness guarantee guarantees invariants soundness exactly-once "
        "idempotent formal rigorous verify validate"
    ),
    "c:scale": (
        "distributed concurrent concurrency scale scalable million millions billion "
        "global multi-region production-grade production throughput latency p99 qps "
        "failover partitions"
    ),
    "c:breadth": (
        "each every all across multiple comprehensive thorough trade-offs tradeoffs "
        "compare comparing prioritise prioritised rank including covering cover "
        "edge cases consistent"
    ),
    "c:expert": (
        "regulatory legal compliance clinical statistical causal cryptography memory "
        "lock-free kernel consensus recovery migration schema semantics"
    ),
    "c:trivial": "one simple quick just word line only short tiny hi hello thanks",
}


# The complexity model's inputs besides the cue groups, in the order
# ``complexity_features`` makes them (``_complexity`` relies on it).
_COMPLEXITY_NUMERIC = ("c:words", "c:chars", "c:commas", "c:ands", "c:turns", "c:tools")


def _vocab(groups: Mapping[str, str], prefix: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for name, words in groups.items():
        for w in words.split():
            out.setdefault(w, []).append(prefix + name)
    return {w: tuple(v) for w, v in out.items()}


_GROUP_WORDS = _vocab(_GROUPS, "k:")
_LANGS = frozenset(_GROUPS["lang"].split())
_INTO = frozenset("in into to from en al a ins auf nach vers para".split())
_COMPLEXITY_WORDS = _vocab(_COMPLEXITY_CUES, "")
_COMPLEXITY_KEYS = frozenset(_COMPLEXITY_WORDS)
_GROUP_PHRASES: dict[str, tuple[str, ...]] = {}
for _name, _alts in _PHRASES.items():
    for _p in _alts.split("|"):
        _GROUP_PHRASES.setdefault(_p, ())
        _GROUP_PHRASES[_p] += ("k:" + _name,)
# Punctuation becomes a space before splitting, so "error:" finds "error".
_ASCII_PUNCT = b".,;:!?()[]{}\"`*<>=\\|"
# bytes.translate is a table lookup in C; str.translate with a mapping costs
# ~0.1 us a character. UTF-8 keeps every non-ASCII byte >= 0x80, so mapping
# ASCII punctuation bytes leaves the text valid.
_BYTE_PUNCT = bytes.maketrans(_ASCII_PUNCT, b" " * len(_ASCII_PUNCT))
_WIDE_PUNCT = tuple("«»“”‘’¿¡…、。，？！：；（）")
_CJK = re.compile("[\u2e80-\u9fff\uac00-\ud7af\u3040-\u30ff]")
_ARITH = re.compile(r"\d\s*(?:[-+*/×=x]|times|plus|minus|divided)\s*\d")
# An opening quote (after a space, a colon or a bracket: not an apostrophe
# inside a word), a short span, a close.
_QUOTED = re.compile("[\\s:(\\[]['\"«“‘][^'\"»”’\\n]{1,80}['\"»”’]")
_CJK_WORDS = tuple(
    (key, "k:" + group)
    for group, keys in {
        "translate": "翻译 翻訳 번역 英文 英語 영어",
        "summarise": "总结 摘要 要約 요약",
        "codegen": "代码 コード 코드",
        "question": "什么 何 哪 谁 多少",
    }.items()
    for key in keys.split()
)


@dataclass(frozen=True, slots=True)
class Inference:
    """What ``infer_task`` read off a call.

    Attributes
    ----------
    task_type
        One of ``KNOWN_TASK_TYPES``, or the default when the model is not
        confident enough.
    confidence
        The model's probability for its best task type, 0-1 (also when it
        fell back to the default).
    complexity
        0 (trivial) to 1 (extremely complex).
    signals
        Names of the rule features that decided (``k:translate``,
        ``x:fence``, ``x:tools`` ...). Never prompt text.
    guessed
        The best task type before the threshold (for reports of the mix).
    """

    task_type: str
    confidence: float
    complexity: float
    signals: tuple[str, ...] = ()
    guessed: str = ""

    @property
    def complexity_level(self) -> str:
        """``low``, ``medium`` or ``high``: the bucket the envelope takes."""
        return complexity_level(self.complexity)


# -- reading messages ---------------------------------------------------------


def _role_content(m: Any) -> tuple[str, Any]:
    # A plain dict first: the Mapping check goes through the ABC machinery.
    if type(m) is dict or isinstance(m, Mapping):
        role = m.get("role")
        return (role if isinstance(role, str) else ""), m.get("content")
    # LangChain messages (duck-typed: no import): .type is human/system/ai/tool.
    role = getattr(m, "type", None)
    role = {"human": "user", "ai": "assistant"}.get(role, role) if isinstance(role, str) else ""
    return role, getattr(m, "content", None)


def _window(content: Any, head: int, tail: int) -> tuple[str, int, int]:
    """``(text window, full length in chars, non-text parts)`` of one content value."""
    if isinstance(content, str):
        n = len(content)
        if n <= head + tail:
            return content, n, 0
        return content[:head] + "\n" + content[n - tail :], n, 0
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts: list[str] = []
        total = media = 0
        parts = list(content[:_MAX_PARTS]) + list(content[max(_MAX_PARTS, len(content) - 2) :])
        for part in parts:
            text = part if isinstance(part, str) else None
            if isinstance(part, Mapping):
                t = part.get("text")
                if isinstance(t, str):
                    text = t
                else:
                    media += 1
            if text is not None:
                total += len(text)
                texts.append(text[:head] if len(text) > head else text)
        joined = "\n".join(texts)
        if len(joined) > head + tail:
            joined = joined[:head] + "\n" + joined[len(joined) - tail :]
        return joined, total, media
    return "", 0, 0


@dataclass(slots=True)
class _Read:
    user: str = ""
    user_chars: int = 0
    system: str = ""
    media: int = 0
    turns: int = 0
    tool_turn: bool = False


def _read(messages: Any) -> _Read:
    r = _Read()
    if type(messages) is not list and (
        not isinstance(messages, Sequence) or isinstance(messages, (str, bytes))
    ):
        if isinstance(messages, str):
            r.user, r.user_chars, _ = _window(messages, HEAD_CHARS, TAIL_CHARS)
        return r
    n = len(messages)
    r.turns = n
    found = False
    for m in reversed(messages[max(0, n - _LAST_MESSAGES) :]):
        role, content = _role_content(m)
        if role in ("tool", "function") and not found:
            r.tool_turn = True
        if role == "user" and not found:
            r.user, r.user_chars, r.media = _window(content, HEAD_CHARS, TAIL_CHARS)
            found = True
            break
    for m in messages[:2]:
        role, content = _role_content(m)
        if role in ("system", "developer"):
            r.system = _window(content, SYSTEM_CHARS, 0)[0][:SYSTEM_CHARS]
            break
    return r


# -- features -------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Lower-case words, punctuation split off ("error:" -> "error")."""
    low = text.lower()
    if low.isascii():
        return low.encode("ascii").translate(_BYTE_PUNCT).decode("ascii").split()
    out = low.encode("utf-8", "surrogatepass").translate(_BYTE_PUNCT).decode(
        "utf-8", "replace")
    for p in _WIDE_PUNCT:
        if p in out:
            out = out.replace(p, " ")
    return out.split()


def extract_features(
    messages: Any, *, tools: Any = None, response_format: Any = None
) -> list[str]:
    """Every feature name of a call (what ``tools/train_infer.py`` trains on).

    Feature names are rule groups (``k:``, ``sk:`` in the system prompt),
    structure flags (``x:``) and words of the window (``w:``, ``b:`` for a
    pair at the opening or the close, ``s:`` in the system prompt, ``f:``
    for the first word). At inference only names in the model's vocabulary
    are built.

    >>> sorted(f for f in extract_features([{"role": "user", "content": "Summarise this"}])
    ...        if f.startswith(("k:", "x:")))
    ['k:summarise', 'x:len0']
    """
    return _names(_parts(_read(messages), tools, response_format))


@dataclass(slots=True)
class _Parts:
    """The window cut into what features are made of (sets, so cost stays flat)."""

    ws: set[str]  # distinct words of the turn's window
    pairs: set[str]  # word pairs at the opening and the close
    grams: set[str]  # pairs and triples there (for phrases)
    first: str
    sw: set[str]  # distinct words of the system prompt's start
    flags: list[str]  # structure flags and rule features not tied to one word
    n: int  # words in the window


def _parts(r: _Read, tools: Any, response_format: Any, model: _Model | None = None) -> _Parts:
    """The parts of a call; with ``model``, only the word pairs and triples it
    knows (what scoring reads: joining every pair costs more than the rest)."""
    raw = r.user
    words = _words(raw)
    edge = words[:_BIGRAM_WORDS] + words[-_BIGRAM_WORDS // 2 :] if words else []
    # Three-word phrases ("how are you") open a turn: only the first words.
    opening = edge[:_TRIGRAM_WORDS]
    if model is None:
        pairs = set(map(" ".join, zip(edge, edge[1:], strict=False)))
        grams = pairs.union(map(" ".join, zip(opening, opening[1:], opening[2:], strict=False)))
    else:
        pairs = set()
        grams = _known_grams(edge, opening, model)
    flags: list[str] = []
    if not _INTO.isdisjoint(edge) and not _LANGS.isdisjoint(edge) and any(
        a in _INTO and b in _LANGS for a, b in zip(edge, edge[1:], strict=False)
    ):
        flags.append("k:tolang")  # "into German", "en anglais", "ins Französische"
    # Structure: what the turn looks like, not what it says.
    if "```" in raw:
        flags.append("x:fence")
    if "Traceback" in raw or "rror:" in raw or "    at " in raw or "Exception" in raw:
        flags.append("x:trace")
    if raw.rstrip().endswith("?"):
        flags.append("x:qend")
    if raw.count("\n") >= 3:
        flags.append("x:lines")
    if "{" in raw and "}" in raw:
        flags.append("x:braces")
    start = raw[:200]
    if not start.isascii():
        if _CJK.search(start):
            flags.append("x:cjk")
            # Unspaced scripts: a few intent words found as substrings.
            flags.extend(dict.fromkeys(g for key, g in _CJK_WORDS if key in start))
        else:
            flags.append("x:accents")
    lead = raw[:300]
    lead_bytes = lead.encode("utf-8", "surrogatepass")
    digits = len(lead_bytes) - len(lead_bytes.translate(None, b"0123456789"))
    if digits >= 4:
        flags.append("x:digits")
    if digits >= 2 and _ARITH.search(lead):
        flags.append("x:arith")
    if _QUOTED.search(" " + lead):  # the space: a quote that opens the turn
        flags.append("x:quoted")
    n = len(words)
    flags.append("x:len0" if n <= 4 else "x:len1" if n <= 15 else "x:len2" if n <= 40 else "x:len3")
    if tools:
        flags.append("x:tools")
    if r.tool_turn:
        flags.append("x:toolturn")
    if r.media:
        flags.append("x:media")
    if _json_format(response_format):
        flags.append("x:json")
    sw = set(_words(r.system)) if r.system else set()
    return _Parts(set(words), pairs, grams, words[0] if words else "", sw, flags, n)


def _known_grams(edge: list[str], opening: list[str], m: _Model) -> set[str]:
    """The pairs of ``edge`` and triples of ``opening`` that ``m`` has rows for
    (the same as joining them all and intersecting, for a fraction of the joins)."""
    nxt = m.pair_next
    out = {
        a + " " + b
        for a, b in zip(edge, edge[1:], strict=False)
        if a in nxt and b in nxt[a]
    }
    first3, keys = m.triple_first, m.gram_keys
    for a, b, c in zip(opening, opening[1:], opening[2:], strict=False):
        if a in first3 and (g := f"{a} {b} {c}") in keys:
            out.add(g)
    return out


def _names(p: _Parts) -> list[str]:
    """Every feature name of the parts (the training view)."""
    feats = ["w:" + w for w in p.ws]
    for w in p.ws & _GROUP_WORDS.keys():
        feats.extend(_GROUP_WORDS[w])
    for g in p.grams & _GROUP_PHRASES.keys():
        feats.extend(_GROUP_PHRASES[g])
    feats.extend("b:" + x for x in p.pairs)
    if p.first:
        feats.append("f:" + p.first)
    feats.extend("s:" + w for w in p.sw)
    for w in p.sw & _GROUP_WORDS.keys():
        feats.extend("s" + g for g in _GROUP_WORDS[w])
    feats.extend(p.flags)
    return list(dict.fromkeys(feats))


def _rows(p: _Parts, m: _Model) -> tuple[list[int], set[int]]:
    """The model rows of the parts' features (``_names`` without building
    names): the rows of their own (one per word, pair, system word or first
    word, so never twice) and the rule and structure rows (shared by many
    words: a set), which are also the ones ``signals`` names."""
    # map/chain keep the loops in C: this runs on every call.
    # (Key sets are frozensets: a set & a dict's keys view is far slower.)
    own = list(map(m.word_own.__getitem__, p.ws & m.word_own_keys))
    sig = set(chain.from_iterable(map(m.word_sig.__getitem__, p.ws & m.word_sig_keys)))
    if p.grams:
        own.extend(map(m.gram_own.__getitem__, p.grams & m.gram_own_keys))
        sig.update(chain.from_iterable(map(m.gram_sig.__getitem__, p.grams & m.gram_sig_keys)))
    if p.sw:
        own.extend(map(m.sys_own.__getitem__, p.sw & m.sys_own_keys))
        sig.update(chain.from_iterable(map(m.sys_sig.__getitem__, p.sw & m.sys_sig_keys)))
    index = m.index
    if (i := index.get("f:" + p.first)) is not None:
        own.append(i)
    for f in p.flags:
        if (i := index.get(f)) is not None:
            sig.add(i)
    return own, sig


def _json_format(response_format: Any) -> bool:
    if response_format is None:
        return False
    if isinstance(response_format, type):
        return True  # a pydantic model: structured output
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        return isinstance(kind, str) and kind.lower() in ("json_object", "json_schema", "json")
    return False


def complexity_features(r: _Read, ws: set[str], n_words: int, n_tools: int) -> dict[str, float]:
    """The complexity model's inputs: numbers about the turn, never its text."""
    out: dict[str, float] = dict.fromkeys(_COMPLEXITY_CUES, 0.0)
    for w in ws & _COMPLEXITY_KEYS:
        for name in _COMPLEXITY_WORDS[w]:
            out[name] += 1.0
    for k in _COMPLEXITY_CUES:
        out[k] = math.log1p(out[k])
    head = r.user[:HEAD_CHARS]
    # The order of _COMPLEXITY_NUMERIC.
    out["c:words"] = math.log1p(n_words)
    out["c:chars"] = math.log1p(r.user_chars) / 10.0
    out["c:commas"] = math.log1p(head.count(",") + head.count(";"))
    out["c:ands"] = math.log1p(head.count(" and ") + head.count(" with ") + head.count(" then "))
    out["c:turns"] = math.log1p(max(r.turns - 1, 0))
    out["c:tools"] = math.log1p(n_tools)
    return out


def read_complexity_features(
    messages: Any, *, tools: Any = None, response_format: Any = None
) -> dict[str, float]:
    """``complexity_features`` of a call (for ``tools/train_infer.py``)."""
    r = _read(messages)
    words = _words(r.user)
    return complexity_features(r, set(words), len(words), _count_tools(tools))


# -- the model --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    classes: tuple[str, ...]
    index: dict[str, int]  # feature name -> row of weights
    weights: np.ndarray  # (features + 1, classes): the last row is the bias
    bias_row: int
    threshold: float
    c_weights: dict[str, float]
    c_bias: float
    c_task: dict[str, float]
    signals: dict[int, str]  # row -> name, for rule and structure features only
    # The rows each word / word pair / system word switches on, so scoring
    # builds no feature names: its own row, and its rule groups' rows.
    word_own: dict[str, int]
    word_sig: dict[str, tuple[int, ...]]
    gram_own: dict[str, int]
    gram_sig: dict[str, tuple[int, ...]]
    sys_own: dict[str, int]
    sys_sig: dict[str, tuple[int, ...]]
    word_own_keys: frozenset[str]
    word_sig_keys: frozenset[str]
    gram_own_keys: frozenset[str]
    gram_sig_keys: frozenset[str]
    sys_own_keys: frozenset[str]
    sys_sig_keys: frozenset[str]
    gram_keys: frozenset[str]  # every pair or triple with a row
    pair_next: dict[str, frozenset[str]]  # first word of a known pair -> its second words
    triple_first: frozenset[str]  # first words of the known triples
    signal_weights: tuple[tuple[float, ...], ...]  # per class, the signal rows' weights
    c_cues: tuple[tuple[str, float], ...]  # complexity cue groups and their weights, in order
    c_numeric: tuple[float, float, float, float, float, float]  # the other inputs' weights


def _row_maps(
    index: Mapping[str, int], prefix: str, groups: Mapping[str, tuple[str, ...]], gprefix: str
) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """Key -> its own row (``prefix + key``), and key -> its groups' rows."""
    own = {f[len(prefix):]: i for f, i in index.items() if f.startswith(prefix)}
    sig: dict[str, tuple[int, ...]] = {}
    for k, gs in groups.items():
        rows = tuple(dict.fromkeys(index[gprefix + g] for g in gs if gprefix + g in index))
        if rows:
            sig[k] = rows
    return own, sig


def _pair_next(grams: frozenset[str]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for g in grams:
        words = g.split(" ")
        if len(words) == 2:
            out.setdefault(words[0], set()).add(words[1])
    return {a: frozenset(bs) for a, bs in out.items()}


_SIGNAL_PREFIXES = ("k:", "sk:", "x:")


@lru_cache(maxsize=1)
def _model() -> _Model:
    # numpy and the weights load on the first call, not on import: importing
    # an adapter must stay cheap.
    import numpy as np

    path = resources.files("tally_core").joinpath("data/infer_model.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    feats = data["features"]
    index = {f: i for i, f in enumerate(feats)}
    word_own, word_sig = _row_maps(index, "w:", _GROUP_WORDS, "")
    gram_own, gram_sig = _row_maps(index, "b:", _GROUP_PHRASES, "")
    sys_own, sys_sig = _row_maps(index, "s:", _GROUP_WORDS, "s")
    grams = frozenset(gram_own) | frozenset(gram_sig)
    c_weights = {k: float(v) for k, v in data["complexity"]["weights"].items()}
    signals = {i: f for f, i in index.items() if f.startswith(_SIGNAL_PREFIXES)}
    if signals and max(signals) != len(signals) - 1:
        raise ValueError("infer_model.json: rule and structure features must come first")
    return _Model(
        classes=tuple(data["classes"]),
        index=index,
        weights=np.vstack(
            [np.asarray(data["weights"], dtype=np.float64),
             np.asarray(data["bias"], dtype=np.float64)[None, :]]
        ),
        bias_row=len(feats),
        threshold=float(data.get("threshold", CONFIDENCE_THRESHOLD)),
        c_weights=c_weights,
        c_bias=float(data["complexity"]["bias"]),
        c_task={k: float(v) for k, v in data["complexity"]["task_offset"].items()},
        signals=signals,
        word_own=word_own,
        word_sig=word_sig,
        gram_own=gram_own,
        gram_sig=gram_sig,
        sys_own=sys_own,
        sys_sig=sys_sig,
        word_own_keys=frozenset(word_own),
        word_sig_keys=frozenset(word_sig),
        gram_own_keys=frozenset(gram_own),
        gram_sig_keys=frozenset(gram_sig),
        sys_own_keys=frozenset(sys_own),
        sys_sig_keys=frozenset(sys_sig),
        gram_keys=grams,
        pair_next=_pair_next(grams),
        triple_first=frozenset(g.split(" ")[0] for g in grams if g.count(" ") == 2),
        c_cues=tuple((k, c_weights.get(k, 0.0)) for k in _COMPLEXITY_CUES),
        c_numeric=cast(
            "tuple[float, float, float, float, float, float]",
            tuple(c_weights.get(k, 0.0) for k in _COMPLEXITY_NUMERIC),
        ),
        signal_weights=tuple(
            tuple(float(v) for v in col) for col in np.asarray(data["weights"])[: len(signals)].T
        ),
    )


def preload() -> None:
    """Load the model now (numpy and ~170 KB of weights) rather than on the first call."""
    _model()


def _count_tools(tools: Any) -> int:
    if isinstance(tools, Sequence) and not isinstance(tools, (str, bytes)):
        return len(tools)
    return 1 if tools else 0


def infer_task(
    messages: Any,
    *,
    tools: Any = None,
    response_format: Any = None,
    default: str = "general",
    threshold: float | None = None,
) -> Inference:
    """Infer the task type and complexity of a call from its messages.

    Parameters
    ----------
    messages
        OpenAI/LiteLLM chat messages (``{"role", "content"}``, content a
        string or a list of parts) or LangChain messages (``.type`` and
        ``.content``), or one string.
    tools, response_format
        The request's tools and output format, when it has them.
    default
        Returned as ``task_type`` when the model's confidence is below
        ``threshold`` (and for an empty call).
    threshold
        Confidence below which the default is returned (the model's own
        threshold when None).

    >>> r = infer_task([{"role": "user", "content": "hey, how's it going?"}])
    >>> r.task_type, r.complexity_level
    ('conversation', 'low')
    """
    r = _read(messages)
    if (not r.user or r.user.isspace()) and not r.media:
        return Inference(default, 0.0, 0.0, ("x:empty",), "")
    model = _model()
    p = _parts(r, tools, response_format, model)
    own, sig = _rows(p, model)
    own.extend(sig)
    own.append(model.bias_row)  # the bias, added last (as bias + the rows' sum was)
    logits: list[float] = model.weights.take(own, axis=0).sum(axis=0).tolist()
    top = max(logits)
    best = logits.index(top)
    confidence = 1.0 / sum([math.exp(v - top) for v in logits])
    guessed = model.classes[best]
    cut = model.threshold if threshold is None else threshold
    task = guessed if confidence >= cut else default
    # The rule features that pushed the winner most: names, never text.
    names, row = model.signals, model.signal_weights[best]
    named = sorted([(row[i], names[i]) for i in sig], reverse=True)
    signals = tuple(f for w, f in named[:3] if w > 0)
    complexity = _complexity(model, r, p.ws, p.n, tools, guessed)
    return Inference(task, round(confidence, 4), round(complexity, 4), signals, guessed)


def _complexity(
    model: _Model, r: _Read, ws: set[str], n_words: int, tools: Any, task_type: str
) -> float:
    # ``complexity_features`` weighed, without building its dict: the same
    # terms in the same order (a cue that is absent adds exactly 0).
    terms: list[float] = []
    hit = ws & _COMPLEXITY_KEYS
    if hit:
        counts = dict.fromkeys(_COMPLEXITY_CUES, 0)
        for w in hit:
            for name in _COMPLEXITY_WORDS[w]:
                counts[name] += 1
        terms.extend([w * math.log1p(counts[k]) for k, w in model.c_cues if counts[k]])
    head = r.user[:HEAD_CHARS]
    ws_, wc, wco, wa, wt, wto = model.c_numeric
    terms += (
        ws_ * math.log1p(n_words),
        wc * (math.log1p(r.user_chars) / 10.0),
        wco * math.log1p(head.count(",") + head.count(";")),
        wa * math.log1p(head.count(" and ") + head.count(" with ") + head.count(" then ")),
        wt * math.log1p(max(r.turns - 1, 0)),
        wto * math.log1p(_count_tools(tools)),
    )
    z = model.c_bias + model.c_task.get(task_type, 0.0)
    z += sum(terms)
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def infer_complexity(messages: Any, task_type: str, *, tools: Any = None) -> float | None:
    """Complexity 0-1 of a call whose task type is known (cheaper than ``infer_task``:
    no classification). None when there is no user text.

    >>> infer_complexity([{"role": "user", "content": "hi"}], "conversation") < 0.34
    True
    """
    r = _read(messages)
    if not r.user.strip():
        return None
    words = _words(r.user)
    return round(_complexity(_model(), r, set(words), len(words), tools, task_type), 4)


def infer_fields(
    messages: Any,
    given: Mapping[str, Any] | None = None,
    *,
    tools: Any = None,
    response_format: Any = None,
    default: str = "general",
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Envelope fields to add to ``given``, and their names: what adapters call.

    Only fields the caller did not give are inferred (``task_type``,
    ``complexity`` as a level, so routing keeps its envelope cache); given
    fields always win. A task type read below the confidence threshold is
    not returned (the caller's default stands), nor is anything for a call
    with no user text. Returns ``({}, ())`` when there is nothing to add.

    >>> infer_fields([{"role": "user", "content": "Translate 'thanks' to Italian"}],
    ...              {"complexity": "high"})
    ({'task_type': 'translation'}, ('task_type',))
    >>> infer_fields([{"role": "user", "content": "hi"}], {"task_type": "qa", "complexity": 0.2})
    ({}, ())
    """
    given = given or {}
    want = [f for f in ("task_type", "complexity") if given.get(f) is None]
    if not want:
        return {}, ()
    known = given.get("task_type")
    if want == ["complexity"] and isinstance(known, str):
        # The task type is given: it sets the prior, and nothing is classified.
        try:
            task = normalise_task_type(known)
        except ValueError:
            return {}, ()  # the envelope will reject it, naming the field
        score = infer_complexity(messages, task, tools=tools)
        if score is None:
            return {}, ()
        return {"complexity": complexity_level(score)}, ("complexity",)
    result = infer_task(messages, tools=tools, response_format=response_format, default=default)
    out: dict[str, Any] = {}
    if not result.guessed:
        return out, ()  # no user text: nothing was read
    if "task_type" in want and result.task_type == result.guessed:
        out["task_type"] = normalise_task_type(result.task_type)
    if "complexity" in want:
        out["complexity"] = result.complexity_level
    return out, tuple(out)
