"""suite=pandalm: answer sets judged against each other by a PandaLM-style judge, as a matrix.

Rows are the exits of the first checkpoint (model A), columns those of the second (of the first again when
only one is given), or two answer files ``answers=[A.jsonl,B.jsonl]``. Every pair is judged in both orders
(:mod:`sortednet.eval.pandalm`); a cell is the row's score against the column. Written to the run directory:
``pandalm.csv`` (the score grid), ``pandalm_long.csv`` (one line per pair with every count),
``pandalm_verdicts.jsonl`` (every verdict) and ``pandalm.png`` (a heatmap).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sortednet.errors import SortedNetError
from sortednet.eval.agreement import load_checked_judge
from sortednet.eval.generation import generate_all, read_answer_file, read_instructions
from sortednet.eval.output import free_path, json_lines_text, pyplot, show_table
from sortednet.eval.pandalm import answer_texts, check_items, judge_pair_sets, score
from sortednet.io import write_file_atomically, write_text_atomically

log = logging.getLogger(__name__)

ROW_AXIS, COL_AXIS = "model A exit", "model B exit"
LONG_COLUMNS = (
    "row",
    "col",
    "score",
    "wins",
    "losses",
    "ties",
    "total",
    "unparseable",
    "judgements",
    "unparseable_rate",
)


def judge_matrix(
    judge,
    tokenizer,
    items: Sequence[Mapping],
    rows: Mapping[str, Sequence[str | Mapping]],
    cols: Mapping[str, Sequence[str | Mapping]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
) -> list[dict]:
    """Judge every row answer set (model A) against every column answer set (model B).

    ``rows`` and ``cols`` map labels (free strings such as ``"soft@4"``, ``"sft@8"``) to answer sets as
    :func:`judge_pair_sets` takes them; all sets are checked against ``items`` before any judging. Returns
    one record per (row, col), rows outer, in the mappings' order: ``row``, ``col``, the :func:`score`
    keys (from the row's side: score > 0 means the row's answers won more often) and ``details``, the
    :func:`judge_pair_sets` records of that pair.
    """
    items = check_items(items)
    if not rows or not cols:
        raise SortedNetError("the judge matrix needs at least one row and one column answer set")
    for label, answers in [*rows.items(), *cols.items()]:
        answer_texts(answers, items, label)
    matrix = []
    for row, answers_a in rows.items():
        for col, answers_b in cols.items():
            records = judge_pair_sets(
                judge,
                tokenizer,
                items,
                answers_a,
                answers_b,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                names=(row, col),
            )
            cell = {"row": row, "col": col, **score(records), "details": records}
            log.info("judged %s vs %s: score %.3f (%d unparseable)", row, col, cell["score"], cell["unparseable"])
            matrix.append(cell)
    return matrix


def _grid(records: Sequence[Mapping]) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    if not records:
        raise SortedNetError("no judge matrix records to write; judge at least one pair of answer sets")
    rows = list(dict.fromkeys(r["row"] for r in records))
    cols = list(dict.fromkeys(r["col"] for r in records))
    return rows, cols, {(r["row"], r["col"]): r["score"] for r in records}


def write_matrix_csv(records: Sequence[Mapping], path: str | Path, long_path: str | Path | None = None):
    """Write the judge matrix as two CSV files; return ``(grid_path, long_path)``.

    ``path``: the score grid, one line per row label (model A) and one column per column label (model B),
    labels in first-seen order, the header's first cell ``model A exit \\ model B exit``; a pair missing
    from ``records`` is an empty cell. ``long_path`` (default ``<path stem>_long.csv`` beside ``path``): one
    line per record with the columns :data:`LONG_COLUMNS` (all counts). Floats are written in full (``nan``
    where nothing parsed).
    """
    rows, cols, scores = _grid(records)
    path = Path(path)
    long_path = Path(long_path) if long_path is not None else path.with_name(f"{path.stem}_long.csv")
    grid = io.StringIO(newline="")
    writer = csv.writer(grid)
    writer.writerow([f"{ROW_AXIS} \\ {COL_AXIS}", *cols])
    for row in rows:
        writer.writerow([row, *(scores.get((row, col), "") for col in cols)])
    long = io.StringIO(newline="")
    writer = csv.DictWriter(long, fieldnames=LONG_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    write_text_atomically(path, grid.getvalue())
    write_text_atomically(long_path, long.getvalue())
    return path, long_path


def plot_heatmap(records: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """A heatmap PNG of the judge matrix: rows are model A's answer sets, columns model B's, each cell
    coloured and labelled with A's score against B (diverging colormap centred at 0 over [-1, 1]; a pair
    missing from ``records`` or with no parseable verdict is grey, labelled ``n/a``)."""
    plt = pyplot()

    rows, cols, scores = _grid(records)
    values = np.array([[scores.get((row, col), math.nan) for col in cols] for row in rows], dtype=float)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="lightgrey")
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 1.0 + 0.7 * len(rows)), layout="constrained")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto")
    for i, j in np.ndindex(values.shape):
        value = values[i, j]
        text = "n/a" if math.isnan(value) else f"{value:+.2f}"
        colour = "white" if abs(value) > 0.6 else "black"
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(COL_AXIS)
    ax.set_ylabel(ROW_AXIS)
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="score = (wins - losses) / total")
    path = Path(path)
    try:
        write_file_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path


def pairs(rows: list[str], cols: list[str], which: str) -> list[tuple[str, str]]:
    """The (row, column) labels judged: ``all``, ``diagonal`` (the same exit) or ``vs_last`` (the last column)."""
    if which == "vs_last":
        return [(r, cols[-1]) for r in rows]
    if which == "diagonal":
        exit_of = {c.rsplit("@", 1)[-1]: c for c in cols}
        chosen = [(r, exit_of[r.rsplit("@", 1)[-1]]) for r in rows if r.rsplit("@", 1)[-1] in exit_of]
        if not chosen:
            raise SortedNetError("pairs=diagonal found no exit shared by the two answer sets; use pairs=all")
        return chosen
    return [(r, c) for r in rows for c in cols]


def _answer_files(files: list[str]) -> tuple[list[dict], dict, dict]:
    """``(items, rows, cols)`` of two answer files, the second checked against the first's instructions."""
    if len(files) != 2:
        raise SortedNetError(f"answers has {len(files)} files; give two: answers=[A.jsonl,B.jsonl]")
    sets = {Path(p).stem: read_answer_file(Path(p).expanduser()) for p in files}
    if len(sets) != 2:
        raise SortedNetError("the two answer files have the same name; rename one")
    (row_label, first), (col_label, second) = sets.items()
    items = [{"instruction": x.get("instruction"), "input": x.get("input") or ""} for x in first]
    answer_texts(second, items, col_label)  # before a judge of many GB is loaded
    return items, {row_label: first}, {col_label: second}


def run(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """suite=pandalm: the judge matrix of the settings' answer sets -> ``pandalm.csv``, ``pandalm_long.csv``,
    ``pandalm_verdicts.jsonl``, ``pandalm.png``."""
    if settings.answers is not None:
        items, rows, cols = _answer_files(settings.answers)
    else:
        items = read_instructions(settings.instructions, settings.limit, settings.cache_dir)
        answers = generate_all(settings, paths, names, out, items)
        col_name = names[1] if len(names) > 1 else names[0]
        rows = {f"{n}@{e}": lines for (n, e), (lines, _, _) in answers.items() if n == names[0]}
        cols = {f"{n}@{e}": lines for (n, e), (lines, _, _) in answers.items() if n == col_name}
    judge, tokenizer = load_checked_judge(settings)
    records = []
    for row, col in pairs(list(rows), list(cols), settings.pairs):
        records += judge_matrix(
            judge, tokenizer, items, {row: rows[row]}, {col: cols[col]},
            batch_size=settings.batch_size, max_new_tokens=settings.judge_max_new_tokens,
        )  # fmt: skip
    grid = out.path("pandalm.csv")
    write_matrix_csv(records, grid, free_path(out.root / f"{grid.stem}_long.csv"))
    verdicts = [{"row": r["row"], "col": r["col"], **d} for r in records for d in r["details"]]
    write_text_atomically(free_path(out.root / f"{grid.stem}_verdicts.jsonl"), json_lines_text(verdicts))
    title = f"judge: {settings.judge}"
    out.image("pandalm", plot_heatmap(records, free_path(out.root / f"{grid.stem}.png"), title=title))
    table = [{k: v for k, v in r.items() if k != "details"} for r in records]
    out.log_table("pandalm", table)
    columns = ["row", "col", "score", "wins", "losses", "ties", "unparseable"]
    show_table(
        table, columns, f"PandaLM-style judging ({settings.judge}), both orders: score = (wins - losses) / total"
    )
    return table


def mean_scores(root: Path) -> dict[tuple[str, int], float]:
    """Each row answer set's mean score over the columns of ``pandalm_long.csv`` in the run directory ``root``
    (``suite=pareto metric=pandalm``)."""
    path = root / "pandalm_long.csv"
    if not path.is_file():
        raise SortedNetError(f"metric=pandalm reads {path}; run suite=pandalm with out={root} first")
    scores: dict[tuple[str, int], list[float]] = {}
    with path.open(encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            name, _, exit_ = record["row"].rpartition("@")
            if exit_.isdigit():
                scores.setdefault((name, int(exit_)), []).append(float(record["score"]))
    return {key: sum(v) / len(v) for key, v in scores.items()}
