"""How far a judge agrees with people: PandaLM's 999 human-labelled response pairs.

PandaLM's ``testset-v1.json`` holds 999 pairs (``idx``, ``instruction``, ``input``, ``response1``,
``response2``) with three human verdicts each (``annotator1..3``: 1 = response 1 is better, 2 = response 2,
0 = tie). The reference is their majority (ties are a class of their own); an item whose three annotators
all differ has no majority and is left out (none of the 999 does).

A judge is asked about every pair in both orders with suite=pandalm's prompt and parser
(:mod:`sortednet.eval.pandalm`). Its verdict on a pair is the one both orders agree on; an order-inconsistent
pair counts as a tie (the judge could not tell them apart except by position), and a pair with an
unparseable verdict in either order is *unparseable*, a fourth predicted class that is never right. Verdicts
made elsewhere (``verdicts=FILE``: ``idx`` plus ``verdict``, or ``pandalm_result`` as in PandaLM's published
``pandalm-7b-testset-v1.json``, optionally ``verdict_swapped``) are scored the same way; a file with one order
only has no inconsistency share.

Reported per judge: accuracy, macro-F1 over the three human classes, the confusion matrix (human rows,
judge columns), and the shares of order-inconsistent and unparseable pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sortednet.data.rows import json_lines
from sortednet.errors import SortedNetError
from sortednet.eval.output import format_table, pyplot, show_table
from sortednet.eval.pandalm import judge_pair_sets, load_judge
from sortednet.hub import default_cache_dir, resolve_dtype
from sortednet.inference.load import resolve_device
from sortednet.io import write_text_atomically

LABELS = ("1", "2", "tie")  # the human classes; a judge can also be "unparseable"
PREDICTED = (*LABELS, "unparseable")
CODES = {0: "tie", 1: "1", 2: "2", "0": "tie", "1": "1", "2": "2", "tie": "tie", "Tie": "tie"}
TESTSET_FILE = "testset-v1.json"
REFERENCE_FILE = "pandalm-7b-testset-v1.json"
DATA_URL = "https://raw.githubusercontent.com/WeOpenML/PandaLM/main/data"
PUBLISHED_JUDGE = "WeOpenML/PandaLM-7B-v1"  # its verdicts on the 999 pairs are REFERENCE_FILE


def _label(value, where: str) -> str | None:
    """A verdict code as ``"1"``, ``"2"`` or ``"tie"``; ``None`` (null) is an unparseable verdict."""
    if value is None:
        return None
    if isinstance(value, bool) or value not in CODES:
        raise SortedNetError(f"{where}: verdict {value!r} is not 1, 2, 0/tie or null")
    return CODES[value]


def _read_json_records(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise SortedNetError(f"{what} {str(path)!r} not found")
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        records = json_lines(text, path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SortedNetError(f"{what} {str(path)!r} must be a JSON list (or JSON lines) of objects")
    return records


def default_testset(cache_dir=None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "pandalm" / TESTSET_FILE


def read_labelled_pairs(path: str | Path | None, cache_dir=None) -> list[dict]:
    """PandaLM's labelled pairs: ``idx``, ``instruction``, ``input``, ``response1``, ``response2``, ``human``
    (the majority label, or ``None`` without a majority)."""
    file = Path(path).expanduser() if path else default_testset(cache_dir)
    if not file.is_file():
        fetch = f"mkdir -p {file.parent} && curl -L -o {file} {DATA_URL}/{TESTSET_FILE}"
        raise SortedNetError(f"PandaLM's labelled test set is not at {file}; get it with: {fetch} (or pass data=PATH)")
    pairs = []
    for row, record in enumerate(_read_json_records(file, "labelled test set")):
        where = f"{file} row {row}"
        missing = [k for k in ("idx", "instruction", "response1", "response2", "annotator1") if k not in record]
        if missing:
            raise SortedNetError(f"{where} has no {', '.join(missing)}; pass PandaLM's testset-v1.json")
        votes = [_label(record[k], where) for k in ("annotator1", "annotator2", "annotator3") if k in record]
        label, count = Counter(votes).most_common(1)[0]
        human = label if count * 2 > len(votes) else None
        fields = {k: record[k] for k in ("idx", "instruction", "response1", "response2")}
        pairs.append({**fields, "input": record.get("input") or "", "human": human})
    if len({p["idx"] for p in pairs}) != len(pairs):
        raise SortedNetError(f"{file} repeats an idx; every pair needs its own")
    return pairs


def swap(verdict: str | None) -> str | None:
    """A verdict given with the responses swapped, in the original numbering."""
    return {"1": "2", "2": "1"}.get(verdict, verdict)


def pair_verdict(first: str | None, swapped: str | None = None, both_orders: bool = True) -> str:
    """The judge's verdict on a pair from its verdict in the given order and in the swapped order (in the
    swapped order's own numbering): ``unparseable`` if either is, the common verdict if they agree, else a tie."""
    if first is None or (both_orders and swapped is None):
        return "unparseable"
    if not both_orders:
        return first
    return first if first == swap(swapped) else "tie"


def read_verdicts(path: str | Path) -> dict[int, tuple[str | None, str | None, bool]]:
    """``idx -> (verdict, swapped verdict, both orders given)`` from a verdict file (see the module doc)."""
    file = Path(path).expanduser()
    verdicts = {}
    records = _read_json_records(file, "verdict file")
    both = all("verdict_swapped" in r for r in records)
    for row, record in enumerate(records):
        where = f"{file} row {row}"
        key = "verdict" if "verdict" in record else "pandalm_result" if "pandalm_result" in record else None
        if key is None or not isinstance(record.get("idx"), int):
            raise SortedNetError(f"{where} needs an integer 'idx' and a 'verdict' (or 'pandalm_result')")
        if record["idx"] in verdicts:
            raise SortedNetError(f"{where} repeats idx {record['idx']}; give one verdict per pair")
        swapped = _label(record.get("verdict_swapped"), where) if both else None
        verdicts[record["idx"]] = (_label(record[key], where), swapped, both)
    if not verdicts:
        raise SortedNetError(f"verdict file {str(file)!r} holds no verdicts")
    return verdicts


def agreement(humans: Sequence[str | None], predicted: Sequence[str], inconsistent: Sequence[bool] | None) -> dict:
    """Accuracy, macro-F1 (over :data:`LABELS`), confusion matrix and shares of judge ``predicted`` verdicts
    (from :data:`PREDICTED`) against ``humans`` (``None``: no majority, left out). ``inconsistent`` flags the
    order-inconsistent pairs (``None`` when the judge gave one order only)."""
    if len(humans) != len(predicted) or (inconsistent is not None and len(inconsistent) != len(humans)):
        raise SortedNetError("human labels, verdicts and consistency flags must be given once per pair")
    kept = [i for i, h in enumerate(humans) if h is not None]
    pairs = [(humans[i], predicted[i]) for i in kept]
    n = len(pairs)
    confusion = {h: {p: 0 for p in PREDICTED} for h in LABELS}
    for human, judge in pairs:
        confusion[human][judge] += 1
    f1s = []
    for label in LABELS:
        hits = confusion[label][label]
        said = sum(confusion[h][label] for h in LABELS)
        true = sum(confusion[label].values())
        # a class nobody predicted and nobody labelled is perfectly handled; otherwise the usual harmonic mean
        f1s.append(1.0 if said == true == 0 else 2 * hits / (said + true))
    return {
        "pairs": n,
        "no_majority": len(humans) - n,
        "accuracy": sum(h == p for h, p in pairs) / n if n else math.nan,
        "macro_f1": sum(f1s) / len(f1s),
        **{f"f1_{label}": value for label, value in zip(LABELS, f1s, strict=True)},
        "inconsistent_share": sum(inconsistent[i] for i in kept) / n if inconsistent is not None and n else math.nan,
        "unparseable_share": sum(p == "unparseable" for _, p in pairs) / n if n else math.nan,
        "confusion": confusion,
    }


def score_verdicts(pairs: Sequence[Mapping], verdicts: Mapping[int, tuple[str | None, str | None, bool]]) -> dict:
    """:func:`agreement` of verdicts (as :func:`read_verdicts` gives them) on the labelled ``pairs`` they cover;
    every verdict must name a pair of the test set."""
    by_idx = {p["idx"]: p for p in pairs}
    unknown = sorted(set(verdicts) - set(by_idx))
    if unknown:
        raise SortedNetError(f"verdicts for idx {unknown[:5]} name no pair of the labelled test set")
    chosen = [by_idx[i] for i in sorted(verdicts)]
    predicted, inconsistent = [], []
    both = all(v[2] for v in verdicts.values())
    for pair in chosen:
        first, swapped, _ = verdicts[pair["idx"]]
        predicted.append(pair_verdict(first, swapped, both))
        inconsistent.append(both and None not in (first, swapped) and first != swap(swapped))
    return agreement([p["human"] for p in chosen], predicted, inconsistent if both else None)


def judge_verdicts(judge, tokenizer, pairs: Sequence[Mapping], batch_size: int, max_new_tokens: int) -> list[dict]:
    """The judge's verdicts on ``pairs`` in both orders (suite=pandalm's prompt, decoding and parser): one record
    per pair, ``idx``, ``verdict``, ``verdict_swapped`` (in that order's own numbering; ``None`` when
    unparseable), ``raw``, ``raw_swapped`` — the verdict-file format :func:`read_verdicts` reads back."""
    records = judge_pair_sets(
        judge, tokenizer, pairs, [p["response1"] for p in pairs], [p["response2"] for p in pairs],
        batch_size=batch_size, max_new_tokens=max_new_tokens, names=("response1", "response2"),
    )  # fmt: skip
    given, swapped = records[0::2], records[1::2]  # judge_pair_sets alternates the orders, given order first
    return [
        {
            "idx": p["idx"],
            "verdict": a["verdict"],
            "verdict_swapped": b["verdict"],
            "raw": a["raw"],
            "raw_swapped": b["raw"],
        }
        for p, a, b in zip(pairs, given, swapped, strict=True)
    ]


# ---------------------------------------------------------------- where agreement reports live


def report_path(judge: str, cache_dir=None) -> Path:
    """Where the agreement report of ``judge`` is kept: ``<cache>/judge_agreement/<key>.json`` with the key
    the hub id (``/`` as ``--``) or, for a local directory, its name plus a hash of its absolute path."""
    local = Path(judge).expanduser()
    if local.exists():
        absolute = str(local.resolve())
        key = f"{local.resolve().name}-{hashlib.sha256(absolute.encode()).hexdigest()[:12]}"
    else:
        key = judge.replace("/", "--")
    return Path(cache_dir or default_cache_dir()) / "judge_agreement" / f"{key}.json"


def has_report(judge: str, cache_dir=None) -> bool:
    """Whether ``judge``'s agreement with people is known: a report of suite=judge_agreement, or PandaLM-7B's
    published verdicts on the same pairs."""
    return judge == PUBLISHED_JUDGE or report_path(judge, cache_dir).is_file()


def load_checked_judge(settings):
    """``(judge, tokenizer)`` of the settings' ``judge`` on their ``device`` in ``judge_dtype``, with a warning
    when its agreement with people was never measured."""
    if not has_report(settings.judge, settings.cache_dir):
        print(
            f"sortednet: warning: judge {settings.judge} has no agreement report against human verdicts (none at "
            f"{report_path(settings.judge, settings.cache_dir)}); measure it: suite=judge_agreement "
            f"judge={settings.judge}",
            file=sys.stderr,
        )
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.judge_dtype, device)
    return load_judge(settings.judge, device, dtype=dtype, cache_dir=settings.cache_dir)


# ---------------------------------------------------------------- the suite's report


def reference_verdicts(testset: Path, idx: set[int]) -> dict | None:
    """PandaLM-7B's published verdicts (``pandalm-7b-testset-v1.json`` beside the test set) on the pairs ``idx``,
    or None (with a note) when the file is absent."""
    file = testset.parent / REFERENCE_FILE
    if not file.is_file():
        print(
            f"sortednet: no reference row: PandaLM-7B's verdicts are not at {file}; get them with: curl -L -o {file} "
            f"{DATA_URL}/{REFERENCE_FILE}",
            file=sys.stderr,
        )
        return None
    return {i: v for i, v in read_verdicts(file).items() if i in idx}


def report_rows(pairs: Sequence[Mapping], judged: Mapping[str, Mapping]) -> tuple[list[dict], dict]:
    """``(table, confusions)``: one table row per judge label (the :func:`score_verdicts` figures without the
    confusion matrix, plus ``orders``), and each label's confusion matrix."""
    table, confusions = [], {}
    for label, verdicts in judged.items():
        figures = score_verdicts(pairs, verdicts)
        confusions[label] = figures.pop("confusion")
        orders = 2 if all(v[2] for v in verdicts.values()) else 1
        table.append({"judge": label, "orders": orders, **figures})
    return table, confusions


def format_confusion(label: str, confusion: Mapping[str, Mapping[str, int]]) -> str:
    rows = [{"human \\ judge": human, **counts} for human, counts in confusion.items()]
    return format_table(rows, ["human \\ judge", *PREDICTED], f"confusion matrix, {label}")


def plot_confusions(confusions: Mapping[str, Mapping[str, Mapping[str, int]]]):
    """One heatmap per judge: human majority (rows) against the judge's verdict (columns), row-normalised."""
    plt = pyplot()

    figure, axes = plt.subplots(1, len(confusions), figsize=(1 + 4.5 * len(confusions), 4), squeeze=False)
    for axis, (label, confusion) in zip(axes[0], confusions.items(), strict=True):
        counts = np.array([[confusion[h][p] for p in PREDICTED] for h in LABELS], dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i, j in np.ndindex(counts.shape):
            axis.text(
                j, i, f"{int(counts[i, j])}", ha="center", va="center", color="black" if shares[i, j] < 0.6 else "white"
            )
        axis.set_xticks(range(len(PREDICTED)), PREDICTED)
        axis.set_yticks(range(len(LABELS)), LABELS)
        axis.set_xlabel("judge")
        axis.set_ylabel("human majority")
        axis.set_title(label, fontsize=9)
    figure.tight_layout()
    return figure


def run(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """suite=judge_agreement: the judge's (or a verdict file's) agreement with PandaLM's human majority, beside
    PandaLM-7B's -> ``judge_agreement.csv/json/png``, ``judge_agreement_verdicts.jsonl``; a full run of a judge
    also keeps its report in the cache, where suite=pandalm looks it up."""
    pairs = read_labelled_pairs(settings.data, settings.cache_dir)[: settings.limit]
    idx = {p["idx"] for p in pairs}
    if settings.verdicts:
        label = Path(settings.verdicts).name
        verdicts = {i: v for i, v in read_verdicts(settings.verdicts).items() if i in idx or settings.limit is None}
    else:
        label = settings.judge
        judge, tokenizer = load_checked_judge(settings)
        records = judge_verdicts(judge, tokenizer, pairs, settings.batch_size, settings.judge_max_new_tokens)
        out.jsonl("judge_agreement_verdicts", records)
        verdicts = {r["idx"]: (r["verdict"], r["verdict_swapped"], True) for r in records}
    judged = {label: verdicts}
    testset = Path(settings.data).expanduser() if settings.data else default_testset(settings.cache_dir)
    reference = reference_verdicts(testset, set(verdicts))
    if reference is not None:
        judged[f"{PUBLISHED_JUDGE} (published)"] = reference
    table, confusions = report_rows(pairs, judged)
    report = {"testset": str(testset), "rows": table, "confusion": confusions}
    out.table("judge_agreement", table)
    out.json("judge_agreement", report)
    out.figure("judge_agreement", plot_confusions(confusions))
    if not settings.verdicts and settings.limit is None:
        kept = report_path(settings.judge, settings.cache_dir)
        write_text_atomically(kept, json.dumps({"judge": settings.judge, **report}, indent=2) + "\n")
        print(f"agreement report of {settings.judge} kept at {kept}", file=sys.stderr)
    columns = ["judge", "orders", "pairs", "accuracy", "macro_f1", "inconsistent_share", "unparseable_share"]
    show_table(table, columns, "agreement with the human majority (ties as a class)")
    for name, confusion in confusions.items():
        print(format_confusion(name, confusion), flush=True)
    return table
