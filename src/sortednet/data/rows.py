"""Rows of instruction data: read from a ``.json`` (a list, or JSON Lines) or ``.jsonl`` file or a hub data
set, and checked (every row an ``instruction`` and an ``output``). The readers every data source shares."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sortednet.embedded import make_rows
from sortednet.errors import SortedNetError
from sortednet.hub import EMBEDDED, hub_reachable
from sortednet.io import read_text

log = logging.getLogger(__name__)


def read_rows(path: str) -> list[dict]:
    """Rows of a ``.json`` (a list, or JSON Lines) or ``.jsonl`` file, or of a hub data set's train split."""
    file = Path(path).expanduser()
    if file.is_file():
        text = read_text(file, "data file")
        try:
            if file.suffix == ".jsonl" or _holds_json_lines(text):
                rows = json_lines(text, path)
            else:
                rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise SortedNetError(
                f"malformed JSON in {path} at line {error.lineno}, column {error.colno}: {error.msg}; "
                f"fix the file (JSON Lines files must end in .jsonl)"
            ) from error
        if not isinstance(rows, list):
            raise SortedNetError(f"{path} holds a JSON {type(rows).__name__}, expected a list of rows")
        return rows
    if path.startswith((".", "/", "~")) or path.endswith((".json", ".jsonl")) or path.count("/") > 1:
        raise SortedNetError(f"data file {path!r} not found; pass an existing .json or .jsonl file, or a hub id")
    return _read_hub_rows(path)


def json_lines(text: str, path) -> list:
    """The documents of a JSON Lines text (blank lines skipped); a one-line error naming a malformed line."""
    documents = []
    # Lines end at "\n" only: str.splitlines would also cut at U+0085, U+2028, ... inside strings (TriviaQA has them).
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                documents.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SortedNetError(
                    f"malformed JSON in {path} at line {number}: {error.msg}; fix that line"
                ) from error
    return documents


def _holds_json_lines(text: str) -> bool:
    """Whether a ``.json`` file holds one JSON document a line, as ``datasets``' ``to_json`` writes by default."""
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return error.msg == "Extra data"
    return False


def _read_hub_rows(hub_id: str) -> list[dict]:
    import datasets  # lazy: about 2 s to import, for hub data sets only

    if not hub_reachable():
        raise SortedNetError(
            f"cannot load data set {hub_id!r}: the hub is unreachable; download it where the hub is reachable "
            f"and pass the local file (/path/to/file.json) instead"
        )
    try:
        return datasets.load_dataset(hub_id, split="train").to_list()
    except Exception as error:  # datasets raises many types for "unreachable" / "no such data set"
        raise SortedNetError(
            f"cannot load data set {hub_id!r} from the hub ({type(error).__name__}); download it where a hub "
            f"is reachable and pass the local file (/path/to/file.json) instead"
        ) from error


def check_rows(rows: list, source: str) -> list[dict]:
    """Every row needs non-empty string ``instruction`` and a string ``output``; ``input`` is optional.

    Structural problems raise; rows with an empty output are dropped with a warning (they teach nothing).
    """
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SortedNetError(f"row {index} of {source} is a {type(row).__name__}, expected an object")
        for key in ("instruction", "output"):
            if key not in row:
                raise SortedNetError(
                    f"row {index} of {source} has no {key!r} field; every row needs 'instruction' and 'output'"
                )
        for key in ("instruction", "input", "output"):
            if key in row and row[key] is not None and not isinstance(row[key], str):
                raise SortedNetError(f"row {index} of {source}: {key!r} is a {type(row[key]).__name__}, not text")
        if not (row["instruction"] or "").strip():
            raise SortedNetError(f"row {index} of {source} has an empty instruction; fill it or drop the row")
    empty = [i for i, r in enumerate(rows) if not (r["output"] or "").strip()]
    kept = [r for i, r in enumerate(rows) if i not in set(empty)]
    if empty:
        log.warning(f"dropped {len(empty)} rows of {source} with an empty output (rows {empty[:5]}...)")
    if not kept:
        raise SortedNetError(f"{source} has no row with a non-empty output; nothing to train on")
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]} for r in kept]


def held_out_rows(data: str | None, count: int, seed: int, skip: int = 0) -> list[dict]:
    """Up to ``count`` rows for measuring a trained model on: with ``data`` None or ``embedded``, fresh rows of
    the embedded task families drawn with ``seed`` (training's rows are seed 0, so pick another); else rows
    ``[skip, skip + count)`` of the user's Alpaca file ``data``, checked."""
    if data in (None, EMBEDDED):
        return make_rows(count, seed=seed)
    return check_rows(read_rows(data), data)[skip : skip + count]
