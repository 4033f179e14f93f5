"""Rebuild ``tally_core/data/infer_model.json`` from the project's own prompts.

The training set is ``tests/data/infer_prompts_tune.jsonl`` (written by the
project; no downloaded corpus). ``tests/data/infer_prompts_holdout.jsonl`` is
never read for fitting: ``--report`` only scores the finished model on it.
Deterministic: full-batch gradient descent from zeros, no random stream.

    python tools/train_infer.py            # fit and write the model
    python tools/train_infer.py --report   # also print accuracy on both parts
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tally_core.envelope import KNOWN_TASK_TYPES  # noqa: E402
from tally_core.infer import extract_features, read_complexity_features  # noqa: E402

TUNE = ROOT / "tests" / "data" / "infer_prompts_tune.jsonl"
HOLDOUT = ROOT / "tests" / "data" / "infer_prompts_holdout.jsonl"
OUT = ROOT / "tally_core" / "data" / "infer_model.json"

# Word features must occur in at least this many training prompts: a word
# seen once is a fact about that prompt, not about its task type.
MIN_COUNT = 2
RULES = ("k:", "sk:", "x:")
# Features whose largest weight is below this are dropped from the shipped
# model: fewer rows to look up per call. Chosen by CV on the tune part.
PRUNE = 1e-3
L2 = 0.002
STEPS = 600
LR = 0.5
THRESHOLD = 0.2
# Prior complexity of a task type (log-odds), set by hand: pairs within a
# type cannot tell how hard one type is against another.
TASK_OFFSET = {
    "architecture-design": 0.8, "reasoning": 0.3, "code-debug": 0.3,
    "code-generation": 0.3, "data-analysis": 0.3, "code-review": 0.2,
    "creative-writing": 0.1, "summarisation": 0.0, "extraction": 0.0,
    "classification": -0.1, "translation": -0.2, "formatting": -0.2,
    "qa-simple": -0.5, "conversation": -0.6,
}


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def call_of(row: dict[str, Any]) -> dict[str, Any]:
    """The row as ``infer_task`` keyword arguments."""
    messages = []
    if row.get("sys"):
        messages.append({"role": "system", "content": row["sys"]})
    messages.append({"role": "user", "content": row["p"]})
    tools = [{"type": "function", "function": {"name": "record"}}] if row.get("tools") else None
    rf = {"type": "json_object"} if row.get("json") else None
    return {"messages": messages, "tools": tools, "response_format": rf}


def fit_classes(
    rows: list[dict[str, Any]], l2: float = 0.0
) -> tuple[list[str], np.ndarray, np.ndarray]:
    feats = [extract_features(**call_of(r)) for r in rows]
    df = Counter(f for fs in feats for f in set(fs))
    # Rule and structure features first: scoring finds the signals by row number.
    keep = sorted(
        (f for f, n in df.items() if f.startswith(RULES) or n >= MIN_COUNT),
        key=lambda f: (not f.startswith(RULES), f),
    )
    col = {f: i for i, f in enumerate(keep)}
    classes = list(KNOWN_TASK_TYPES)
    x = np.zeros((len(rows), len(keep)))
    for i, fs in enumerate(feats):
        for f in set(fs):
            if f in col:
                x[i, col[f]] = 1.0
    y = np.zeros((len(rows), len(classes)))
    for i, r in enumerate(rows):
        y[i, classes.index(r["t"])] = 1.0
    w = np.zeros((len(keep), len(classes)))
    b = np.zeros(len(classes))
    n = len(rows)
    for _ in range(STEPS):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = p - y
        w -= LR * (x.T @ g / n + (l2 or L2) * w)
        b -= LR * g.mean(axis=0)
    return keep, w, b


def fit_complexity(rows: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
    """Pairwise logistic regression: the hard prompt of a pair scores higher."""
    pairs: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        if r.get("pair"):
            pairs.setdefault(r["pair"], {})[r["lvl"]] = read_complexity_features(**call_of(r))
    names = sorted(next(iter(pairs.values()))["hard"])
    d = np.array([[p["hard"][k] - p["trivial"][k] for k in names] for p in pairs.values()])
    w = np.zeros(len(names))
    for _ in range(2000):
        s = 1.0 / (1.0 + np.exp(d @ w))  # gradient of log(1 + exp(-d.w))
        w -= 0.1 * (-(d * s[:, None]).mean(axis=0) + 0.05 * w)
    # Centre: the average tune prompt of a pair sits at 0.5 before the task offset.
    allx = np.array([[p[lv][k] for k in names] for p in pairs.values() for lv in p])
    bias = -float((allx @ w).mean())
    return dict(zip(names, (round(float(v), 5) for v in w), strict=True)), round(bias, 5)


def write(rows: list[dict[str, Any]], out: Path = OUT) -> None:
    keep, w, b = fit_classes(rows)
    # Drop features the fit left near zero: smaller file, same decisions.
    strong = np.abs(w).max(axis=1) >= PRUNE
    cw, cb = fit_complexity(rows)
    data = {
        "version": 1,
        "trained_on": TUNE.relative_to(ROOT).as_posix(),
        "classes": list(KNOWN_TASK_TYPES),
        "threshold": THRESHOLD,
        "features": [f for f, s in zip(keep, strong, strict=True) if s],
        "weights": [[round(float(v), 4) for v in row] for row in w[strong]],
        "bias": [round(float(v), 4) for v in b],
        "complexity": {"weights": cw, "bias": cb, "task_offset": TASK_OFFSET},
    }
    out.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n",
                   encoding="utf-8")
    print(f"wrote {out}: {len(data['features'])} features")


def report(path: Path, label: str, show_errors: bool = False) -> None:
    from tally_core import infer

    infer._model.cache_clear()
    rows = load(path)
    hit = fell = 0
    per: Counter[str] = Counter()
    confusions: Counter[tuple[str, str]] = Counter()
    for r in rows:
        res = infer.infer_task(**call_of(r))
        if res.task_type == r["t"]:
            hit += 1
            per[r["t"]] += 1
        else:
            confusions[(r["t"], res.task_type)] += 1
            fell += res.task_type == "general"
    pairs: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("pair"):
            pairs.setdefault(r["pair"], {})[r["lvl"]] = infer.infer_task(**call_of(r)).complexity
    ok = sum(p["hard"] > p["trivial"] for p in pairs.values())
    print(f"{label}: top-1 {hit}/{len(rows)} = {hit / len(rows):.1%} "
          f"(fell back to default: {fell}); complexity pairs {ok}/{len(pairs)} "
          f"= {ok / len(pairs):.1%}")
    total = Counter(r["t"] for r in rows)
    print("    per type: " + ", ".join(f"{t} {per[t]}/{total[t]}" for t in KNOWN_TASK_TYPES))
    if show_errors:  # never for the held-out part: its errors must not steer tuning
        for (t, g), n in confusions.most_common(8):
            print(f"    {t} -> {g}: {n}")


# Neutral pasted material for the long-prompt check: prose with no task in it.
FILLER = (
    "The quarterly town hall took place in the main auditorium on a rainy Thursday. "
    "Around two hundred people attended in person and many more joined remotely. "
    "The facilities team had rearranged the seating, and coffee ran out early. "
    "Several departments shared updates on hiring, office moves and the new parking "
    "arrangements, and the session closed with a short video from the regional teams. "
)


def report_long(path: Path, label: str, chars: int = 8_000) -> None:
    """Accuracy when each prompt sits before, or after, ``chars`` of pasted prose."""
    from tally_core import infer

    rows = load(path)
    pad = (FILLER * (chars // len(FILLER) + 1))[:chars]
    for where in ("instruction first", "instruction last"):
        hit = 0
        for r in rows:
            call = call_of(r)
            user = call["messages"][-1]
            text = r["p"] + "\n\n" + pad if where == "instruction first" else pad + "\n\n" + r["p"]
            call["messages"][-1] = {**user, "content": text}
            hit += infer.infer_task(**call).task_type == r["t"]
        print(f"{label}, {where}, {chars:,} chars of pasted prose: top-1 {hit}/{len(rows)} "
              f"= {hit / len(rows):.1%}")


def cross_validate(
    rows: list[dict[str, Any]], l2: float, thresholds: tuple[float, ...], k: int = 5,
    prune: float = 0.0,
) -> list[float]:
    """k-fold accuracy inside the tune part, a fallback to the default counted as a miss.

    Model choice (L2, threshold) is made on this alone: the held-out part
    is never looked at to choose anything.
    """
    hits = [0] * len(thresholds)
    for fold in range(k):
        train = [r for i, r in enumerate(rows) if i % k != fold]
        test = [r for i, r in enumerate(rows) if i % k == fold]
        keep, w, b = fit_classes(train, l2)
        col = {f: i for i, f in enumerate(keep) if np.abs(w[i]).max() >= prune}
        for r in test:
            fs = [col[f] for f in extract_features(**call_of(r)) if f in col]
            z = b + w[fs].sum(axis=0)
            best = int(np.argmax(z))
            conf = 1.0 / float(np.exp(z - z[best]).sum())
            for t, cut in enumerate(thresholds):
                hits[t] += KNOWN_TASK_TYPES[best] == r["t"] and conf >= cut
    return [h / len(rows) for h in hits]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", action="store_true", help="print accuracy on both parts")
    ap.add_argument("--cv", action="store_true", help="5-fold accuracy inside the tune part")
    args = ap.parse_args()
    rows = load(TUNE)
    if args.cv:
        cuts = (0.15, 0.2, 0.25, 0.3)
        for l2, prune in ((L2, PRUNE), (L2, 0.02), (L2, 0.05), (L2, 0.1)):
            accs = cross_validate(rows, l2, cuts, prune=prune)
            print(f"L2 {l2}, prune {prune}: tune 5-fold CV top-1 " +
                  ", ".join(f"threshold {c}: {a:.1%}" for c, a in zip(cuts, accs, strict=True)))
    write(rows)
    if args.report:
        report(TUNE, "tune (trained on)", show_errors=True)
        report(HOLDOUT, "held-out (never fitted)")
        report_long(HOLDOUT, "held-out")


if __name__ == "__main__":
    main()
